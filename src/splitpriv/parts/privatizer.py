"""A learned privatizer folded into the split: its customer half ends the bottom, its vendor half starts the top.

``split_model(model, k, privatizer=...)`` calls :func:`attach_privatizer`: ``bottom(x)`` then returns the privatized-
space representation ``u`` [B, T, r] the mechanism perturbs, ``top`` reads [B, T, r] through its up-projection
(``Top.input_width`` = r), and every attack that runs the bottom sees exactly what the vendor receives. The bottom
file (:func:`splitpriv.parts.save_bottom`) carries the customer half's weights and config, so a projection the vendor
trained ships inside the bottom package, and a trained bottom fine-tunes it from the returned gradients.

The same for a causal LM's three-part split: the customer half ends the bottom (embeddings + k blocks), the vendor
half starts the middle, the tail reads the middle's d-wide output as before; so ``tail(top(bottom(x)))`` is the
explicit composition customer half → vendor half → middle → tail. Positions, causal masks and rotary tables are
rebuilt from the mask on each side, never read from the privatized vectors; the halves map every token alone
(:attr:`~splitpriv.privacy.privatizer.Privatizer.token_wise`), so decoding privatizes one new token at a time and
no token's vector depends on a later one. :func:`check_privatizer_fits` refuses, before anything is fitted, a
privatizer a model cannot serve (a width above d, a sentence-mixing privatizer for a causal LM, a fit sample the
vocabulary cannot supply).

A vendor that pre-trained a privatizer (:mod:`splitpriv.roles.vendor.privatizer_pretrain`) keeps both halves in its model
folder (``privatizer.safetensors`` + ``privatizer.json``); :func:`load_privatizer` refuses them for a split of
another model, task, width, depth or privatizer config, naming the difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from splitpriv.privacy.privatizer import Privatizer, build_privatizer

PRIVATIZER_WEIGHTS = "privatizer.safetensors"
PRIVATIZER_META = "privatizer.json"
_HALVES = ("customer.", "vendor.")


def customer_half(privatizer, d: int, seed: int = 0) -> torch.nn.Module:
    """The customer half of ``privatizer`` (config, spec or :class:`Privatizer`) for width ``d``, tagged with its
    config (``.privatizer_config``) so that a saved bottom can rebuild it."""
    built = build_privatizer(privatizer)
    half = built.customer_half(d, seed=seed)
    half.privatizer_config = built.to_config()
    return half


@torch.no_grad()
def _sample(bottom, vocab_size: int, seed: int, n_tokens: int | None = None) -> torch.Tensor:
    """The bottom's outputs [256, d] on random token ids: a data-free sample to initialise the vendor half with.

    With ``n_tokens`` (a privatizer's ``sample_size``, to fit its customer half): ``n_tokens`` distinct ids drawn
    uniformly from the whole vocabulary (every id once when ``n_tokens`` >= V), 64 per row, each at a random
    position < 64. Data-free, so anyone holding the bottom rebuilds the same fit; at k = 0 these are exactly the
    images the vendor's nearest-neighbour attacks compare with. Not frequency-weighted (no text is assumed)."""
    g = torch.Generator().manual_seed(seed)
    if n_tokens is None:
        ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (8, 32), generator=g)
    else:
        ids = torch.randperm(vocab_size, generator=g)[:sample_tokens(vocab_size, n_tokens)]
        ids = ids.reshape(-1, 64) if len(ids) >= 64 else ids[None]
    modes = [(m, m.training) for m in bottom.modules()]
    bottom.eval()
    hidden = torch.cat([bottom(input_ids=c, attention_mask=torch.ones_like(c)) for c in ids.split(64)])
    for module, mode in modes:
        module.training = mode
    return hidden.reshape(-1, hidden.shape[-1])


def sample_tokens(vocab_size: int, n_tokens: int) -> int:
    """How many distinct token ids the data-free fit sample holds for a privatizer asking for ``n_tokens``: at most
    the vocabulary, in whole rows of 64 (one short row when the vocabulary has fewer than 64 ids)."""
    n = min(int(n_tokens), int(vocab_size))
    return n // 64 * 64 if n >= 64 else n


def check_privatizer_fits(privatizer, d: int, vocab_size: int, task: str) -> Privatizer:
    """The privatizer, once it can serve a ``task`` model of width ``d`` and ``vocab_size`` token ids; else one
    ``ValueError`` naming the problem: a width above ``d``, a privatizer that mixes a sentence's tokens for a causal
    LM (its middle reads token t before token t + 1 exists, and generation sends one token at a time), or a fit
    sample the vocabulary cannot supply (e.g. more prototypes than sampled tokens)."""
    built = build_privatizer(privatizer)
    built.check_width(d)
    if task == CAUSAL_LM and not built.token_wise:
        raise ValueError(f"privatizer {built.name!r} mixes a sentence's tokens: a causal LM needs one that maps every "
                         "token alone (generation privatizes one new token at a time)")
    if built.sample_size:
        built.check_sample(sample_tokens(vocab_size, built.sample_size), vocab_size)
    return built


def attach_privatizer(parts, privatizer, *, seed: int = 0):
    """Fold ``privatizer`` into the split ``parts`` in place (a classifier's bottom and top, or a causal LM's bottom
    and middle); returns ``parts``."""
    if parts.bottom.privatizer is not None:
        raise ValueError("this split already has a privatizer")
    d = parts.bottom.d_model
    built = check_privatizer_fits(privatizer, d, int(parts.config.vocab_size), parts.task)
    half = customer_half(built, d, seed)
    if built.sample_size:  # a privatizer fitted to the bottom's outputs (prototypes, covariance)
        built.fit(half, _sample(parts.bottom, int(parts.config.vocab_size), seed, built.sample_size))
    sample = _sample(parts.bottom, int(parts.config.vocab_size), seed)
    parts.bottom.privatizer = half.requires_grad_(False)  # frozen like the model; who trains them decides
    parts.top.privatizer_up = built.vendor_half(half, d, sample).requires_grad_(False)
    return parts


def _identity(parts) -> dict:
    return {"privatizer": parts.bottom.privatizer.privatizer_config, "n_bottom_layers": parts.n_bottom_layers,
            "d_model": parts.bottom.d_model, "model_type": parts.family.model_type, "task": parts.task}


def save_privatizer(parts, directory: str | Path, extra: dict | None = None) -> Path:
    """Write both halves of ``parts``' privatizer to ``directory`` (a model folder the vendor serves)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"customer.{n}": p.detach().contiguous().cpu() for n, p in parts.bottom.privatizer.state_dict().items()}
    state.update({f"vendor.{n}": p.detach().contiguous().cpu() for n, p in parts.top.privatizer_up.state_dict().items()})
    save_file(state, str(directory / PRIVATIZER_WEIGHTS), metadata={"format": "splitpriv-privatizer"})
    (directory / PRIVATIZER_META).write_text(json.dumps({**_identity(parts), **(extra or {})}, indent=2, default=str))
    return directory


def pretrained_privatizer(directory: str | Path | None) -> dict | None:
    """The ``privatizer.json`` of a model folder holding a pre-trained privatizer (None otherwise)."""
    path = Path(directory) / PRIVATIZER_META if directory is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def load_privatizer(parts, directory: str | Path):
    """Overwrite both halves of ``parts``' privatizer with the pre-trained ones in ``directory``; a privatizer
    trained for another model, task, width, split depth or config is one ``ValueError`` naming what differs."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = pretrained_privatizer(directory)
    if meta is None:
        raise FileNotFoundError(f"{directory} holds no pre-trained privatizer ({PRIVATIZER_META} is missing)")
    if parts.bottom.privatizer is None:
        raise ValueError(f"{directory} holds a pre-trained privatizer {meta['privatizer']}: open the session with it "
                         "(SessionConfig.privatizer)")
    own = _identity(parts)
    meta = {"task": SEQUENCE_CLASSIFICATION, **meta}  # written before causal LMs had privatizers: a classifier's
    wrong = {k: (meta.get(k), v) for k, v in own.items() if meta.get(k) != v}
    if wrong:
        what = "; ".join(f"{k}: trained for {a!r}, this split has {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(f"the privatizer in {directory} was trained for another split ({what}); pre-train one for "
                         "this setting (`splitpriv pretrain-privatizer`)")
    state = load_file(str(directory / PRIVATIZER_WEIGHTS))
    for prefix, module in zip(_HALVES, (parts.bottom.privatizer, parts.top.privatizer_up)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return parts
