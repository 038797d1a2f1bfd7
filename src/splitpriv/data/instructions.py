"""Causal-LM data: instruction-style examples ("sentence → label word" in the model's chat template), plain text
for perplexity (WikiText-2), and the user's own JSONL with ``prompt``/``response`` fields.

An :class:`LMExample` is token ids and a target mask: the loss (and the scoring) covers the response tokens only,
so the model learns to answer, not to repeat the prompt. Classification sets become instructions with the label's
name as the answer, scored by exact match of the generated answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION_SETS = {
    "sst2": "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n{text}",
    "financial_phrasebank": "Is this financial news positive, negative or neutral? Answer with one word.\n\n{text}",
}
INSTRUCTION_SETS["sst2-sample"] = INSTRUCTION_SETS["sst2"]  # the embedded SST-2 sample: offline, `train`'s default
SST2_WORDS = {"0": "negative", "1": "positive"}
PLAIN_TEXT = ("wikitext2",)


@dataclass(frozen=True)
class LMExample:
    ids: list[int]
    targets: list[int]  # 1 where the token is predicted (the response), 0 for the prompt
    prompt: str = ""
    response: str = ""

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.targets.index(1)] if 1 in self.targets else list(self.ids)


def chat_example(tokenizer, prompt: str, response: str, max_length: int = 256) -> LMExample:
    """``prompt`` as the user's turn and ``response`` as the assistant's, in the tokenizer's chat template (or
    ``prompt\\nAnswer: response<eos>`` without one); the prompt is cut from the left to fit ``max_length``."""
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}])
        if full[: len(head)] != head:
            raise ValueError("the chat template does not extend the prompt with the answer; cannot mark targets")
        answer = full[len(head):]
        while answer and answer[-1] != tokenizer.eos_token_id:  # drop what follows the end of turn ("\n")
            answer = answer[:-1]
    else:
        head = tokenizer(f"{prompt}\nAnswer:", add_special_tokens=False)["input_ids"]
        answer = tokenizer(f" {response}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(answer) >= max_length:
        raise ValueError(f"the response alone has {len(answer)} tokens, above max_length={max_length}")
    head = head[-(max_length - len(answer)):]
    return LMExample(head + answer, [0] * len(head) + [1] * len(answer), prompt, response)


def text_example(tokenizer, text: str, max_length: int = 256) -> LMExample:
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    return LMExample(ids, [0] + [1] * (len(ids) - 1), "", text)


def load_lm_records(name: str, split: str, *, limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs (``prompt`` empty for plain text): ``sst2`` / ``financial_phrasebank`` as
    instructions, ``wikitext2`` as text (train → valid, dev → test), or a JSONL file with ``prompt`` and
    ``response`` on every line (or a CSV/TSV with those columns). Needs no tokenizer, so a customer can size its
    session before it has one."""
    path = Path(os.fspath(name))
    if path.suffix.lower() in (".jsonl", ".csv", ".tsv") or path.is_file():
        return _user_file(path, limit, seed)
    if name in PLAIN_TEXT:
        from splitpriv.data import load_public_text

        split = {"train": "valid", "dev": "test"}.get(split, split)
        return [("", t) for t in load_public_text(name, split, limit=limit, seed=seed)]
    if name not in INSTRUCTION_SETS:
        raise ValueError(f"no causal-LM version of dataset {name!r}: choose one of "
                         f"{sorted([*INSTRUCTION_SETS, *PLAIN_TEXT])} or a .jsonl file with prompt/response fields")
    from splitpriv.data import load_dataset

    data = load_dataset(name, split, limit=limit, seed=seed)
    words = [SST2_WORDS.get(str(n), str(n)) for n in data.label_names]
    return [(INSTRUCTION_SETS[name].format(text=t), words[y]) for t, y in zip(data.texts, data.labels)]


def encode_lm(records: list[tuple[str, str]], tokenizer, max_length: int = 256) -> list[LMExample]:
    return [chat_example(tokenizer, p, r, max_length) if p else text_example(tokenizer, r, max_length)
            for p, r in records]


def load_lm_dataset(name: str, split: str, tokenizer, *, limit: int | None = None, seed: int = 0,
                    max_length: int = 256) -> list[LMExample]:
    """:func:`load_lm_records` encoded with ``tokenizer``."""
    return encode_lm(load_lm_records(name, split, limit=limit, seed=seed), tokenizer, max_length)


def _user_file(path: Path, limit, seed) -> list[tuple[str, str]]:
    from splitpriv.data.core import sample_indices
    from splitpriv.data.files import read_table

    if not path.is_file():
        raise FileNotFoundError(f"file {path} does not exist")
    _, rows = read_table(path)
    for number, row in enumerate(rows, 1):
        if not row.get("prompt") or not row.get("response"):
            raise ValueError(f"{path}: row {number} needs non-empty fields 'prompt' and 'response'")
    return [(rows[i]["prompt"], rows[i]["response"]) for i in sample_indices(len(rows), limit, seed)]
