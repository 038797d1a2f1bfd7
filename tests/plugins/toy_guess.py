"""A toy attack in one file, for tests/test_extension_points.py: guess one fixed token at every real position."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitpriv.attacks.registry import ATTACKS, Attack


@dataclass(frozen=True)
class ToyGuessOptions:
    token: str = field(default="the", metadata={"help": "toyguess: the token guessed everywhere"})


class _Guess:
    def __init__(self, token_id: int):
        self.token_id = token_id

    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.full(attention_mask.shape, self.token_id, dtype=torch.long)


@ATTACKS.register("toyguess")
class ToyGuess(Attack):
    description = "toy: one fixed token at every position"
    Options = ToyGuessOptions

    @staticmethod
    def run(evaluation, options):
        token_id = evaluation.tokenizer.convert_tokens_to_ids(options.token)
        return evaluation.score("toyguess", _Guess(token_id))
