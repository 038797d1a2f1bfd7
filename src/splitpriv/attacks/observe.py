"""What the vendor observes: the customer's privatized token representations, produced on the customer's own path.

Every observation goes through :func:`splitpriv.privacy.privatize` (mechanism on real tokens, zeros at padding),
exactly what the customer sends; the evaluator keeps the true ``input_ids`` (and, for several epochs, the order in
which each epoch delivered the sentences) to score the attacks, which never see them.

Observations of a set are returned padded to the longest text of the set: the customer pads per batch, but the
representation of a real position does not depend on the padding (padding is masked as keys and zeroed on the
wire), and the mask is sent in the clear, so the padded form carries exactly what the vendor receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitpriv.candidates import eval_mode
from splitpriv.privacy import Mechanism, privatize
from splitpriv.parts import Bottom


def tokenize(tokenizer, texts: list[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, token_type_ids)`` [N, T] for ``texts``, padded to the longest."""
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"]
    tt = enc.get("token_type_ids")
    return ids, enc["attention_mask"], (tt if tt is not None else torch.zeros_like(ids))


@torch.no_grad()
def clean_hidden(bottom: Bottom, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, *, batch_size: int = 64) -> torch.Tensor:
    """The bottom's output ``h`` [N, T, r] before any mechanism (zeros at padding), computed per batch; ``r`` is the
    bottom's output width (``d``, or a privatizer's ``r`` when one is folded into the bottom)."""
    out = None
    with eval_mode(bottom):
        for start in range(0, input_ids.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            mask = attention_mask[sl]
            t = max(int(mask.sum(1).max()), 1)
            tt = token_type_ids[sl, :t] if token_type_ids is not None else None
            h = bottom(input_ids=input_ids[sl, :t], attention_mask=mask[:, :t], token_type_ids=tt)
            if out is None:
                out = torch.zeros(*input_ids.shape, h.shape[-1])
            out[sl, :t] = h.float() * mask[:, :t, None]
    return out if out is not None else torch.zeros(*input_ids.shape, bottom.d_model)


def _noise_scale(cti, input_ids: torch.Tensor) -> torch.Tensor | None:
    return None if cti is None else cti.noise_scale(input_ids).float()


def privatize_hidden(mechanism: Mechanism, hidden: torch.Tensor, attention_mask: torch.Tensor, *,
                     generator: torch.Generator, noise_scale: torch.Tensor | None = None,
                     batch_size: int = 64) -> torch.Tensor:
    """``privatize`` applied batch by batch (the customer sends one batch per step)."""
    out = torch.empty_like(hidden)
    for start in range(0, hidden.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        scale = None if noise_scale is None else noise_scale[sl]
        out[sl] = privatize(mechanism, hidden[sl], attention_mask[sl], generator=generator, noise_scale=scale)
    return out


def observe(bottom: Bottom, tokenizer, mechanism: Mechanism, texts: list[str], *, generator: torch.Generator,
            cti=None, max_length: int = 64, batch_size: int = 64):
    """What the vendor receives for ``texts``: ``(z [N, T, d], mask [N, T], input_ids [N, T])``.

    ``cti`` (a :class:`~splitpriv.privacy.ContributingTokens`, the customer's) scales the noise per token as the
    customer does. ``input_ids`` is the evaluator's ground truth, never an input of an attack.
    """
    ids, mask, tt = tokenize(tokenizer, texts, max_length)
    h = clean_hidden(bottom, ids, mask, tt, batch_size=batch_size)
    z = privatize_hidden(mechanism, h, mask, generator=generator, noise_scale=_noise_scale(cti, ids),
                         batch_size=batch_size)
    return z, mask, ids


@dataclass
class EpochObservations:
    """``epochs`` passes over one set of texts as the vendor receives them.

    ``z[e]`` / ``mask[e]`` [N, T, ...] are epoch ``e``'s observations in arrival order (the customer shuffles every
    epoch); ``order[e][j]`` is the index (into ``input_ids``) of the text that arrived ``j``-th — evaluator-only.
    """

    z: list[torch.Tensor]
    mask: list[torch.Tensor]
    order: list[torch.Tensor]
    input_ids: torch.Tensor
    noise: str

    @property
    def epochs(self) -> int:
        return len(self.z)


def observe_epochs(bottom: Bottom, tokenizer, mechanism: Mechanism, texts: list[str], *, epochs: int,
                   generator: torch.Generator, noise: str = "fresh", cti=None, max_length: int = 64,
                   batch_size: int = 64) -> EpochObservations:
    """``epochs`` shuffled passes over ``texts``.

    ``noise="fresh"``: the customer draws new noise at every step (each epoch's observation of a text is a new
    draw, so averaging them removes noise). ``noise="once"``: the customer privatizes each text once and resends
    the same ``z`` every epoch (averaging gains nothing).
    """
    if noise not in ("fresh", "once"):
        raise ValueError(f"noise must be 'fresh' or 'once', got {noise!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ids, mask, tt = tokenize(tokenizer, texts, max_length)
    h = clean_hidden(bottom, ids, mask, tt, batch_size=batch_size)
    scale = _noise_scale(cti, ids)
    once = None
    if noise == "once":
        once = privatize_hidden(mechanism, h, mask, generator=generator, noise_scale=scale, batch_size=batch_size)
    zs, masks, orders = [], [], []
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=generator)
        if once is not None:
            z = once[order]
        else:
            z = privatize_hidden(mechanism, h[order], mask[order], generator=generator,
                                 noise_scale=None if scale is None else scale[order], batch_size=batch_size)
        zs.append(z)
        masks.append(mask[order])
        orders.append(order)
    return EpochObservations(zs, masks, orders, ids, noise)
