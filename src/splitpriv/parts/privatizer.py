"""A learned privatizer folded into the split: its customer half ends the bottom, its vendor half starts the top.

``split_model(model, k, privatizer=...)`` calls :func:`attach_privatizer`: ``bottom(x)`` then returns the privatized-
space representation ``u`` [B, T, r] the mechanism perturbs, ``top`` reads [B, T, r] through its up-projection
(``Top.input_width`` = r), and every attack that runs the bottom sees exactly what the vendor receives. The bottom
file (:func:`splitpriv.parts.save_bottom`) carries the customer half's weights and config, so a projection the vendor
trained ships inside the bottom package, and a trained bottom fine-tunes it from the returned gradients.

A vendor that pre-trained a privatizer (:mod:`splitpriv.roles.vendor.privatizer_pretrain`) keeps both halves in its model
folder (``privatizer.safetensors`` + ``privatizer.json``); :func:`load_privatizer` refuses them for a split of
another model, width, depth or privatizer config, naming the difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from splitpriv.privacy.privatizer import build_privatizer

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
        ids = torch.randperm(vocab_size, generator=g)[:n_tokens]
        ids = ids[: len(ids) // 64 * 64].reshape(-1, 64) if len(ids) >= 64 else ids[None]
    modes = [(m, m.training) for m in bottom.modules()]
    bottom.eval()
    hidden = torch.cat([bottom(input_ids=c, attention_mask=torch.ones_like(c)) for c in ids.split(64)])
    for module, mode in modes:
        module.training = mode
    return hidden.reshape(-1, hidden.shape[-1])


def attach_privatizer(parts, privatizer, *, seed: int = 0):
    """Fold ``privatizer`` into the split ``parts`` in place (sequence classification only); returns ``parts``."""
    from splitpriv.models import SEQUENCE_CLASSIFICATION

    built = build_privatizer(privatizer)
    if parts.task != SEQUENCE_CLASSIFICATION:
        raise ValueError(f"a privatizer needs a sequence classifier; this split is a {parts.task!r} model")
    if parts.bottom.privatizer is not None:
        raise ValueError("this split already has a privatizer")
    d = parts.bottom.d_model
    half = customer_half(built, d, seed)
    if built.sample_size:  # a privatizer fitted to the bottom's outputs (prototypes, covariance)
        built.fit(half, _sample(parts.bottom, int(parts.config.vocab_size), seed, built.sample_size))
    sample = _sample(parts.bottom, int(parts.config.vocab_size), seed)
    parts.bottom.privatizer = half.requires_grad_(False)  # frozen like the model; who trains them decides
    parts.top.privatizer_up = built.vendor_half(half, d, sample).requires_grad_(False)
    return parts


def _identity(parts) -> dict:
    return {"privatizer": parts.bottom.privatizer.privatizer_config, "n_bottom_layers": parts.n_bottom_layers,
            "d_model": parts.bottom.d_model, "model_type": parts.family.model_type}


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
    trained for another model, width, split depth or config is one ``ValueError`` naming what differs."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = pretrained_privatizer(directory)
    if meta is None:
        raise FileNotFoundError(f"{directory} holds no pre-trained privatizer ({PRIVATIZER_META} is missing)")
    if parts.bottom.privatizer is None:
        raise ValueError(f"{directory} holds a pre-trained privatizer {meta['privatizer']}: open the session with it "
                         "(SessionConfig.privatizer)")
    own = _identity(parts)
    wrong = {k: (meta.get(k), v) for k, v in own.items() if meta.get(k) != v}
    if wrong:
        what = "; ".join(f"{k}: trained for {a!r}, this split has {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(f"the privatizer in {directory} was trained for another split ({what}); pre-train one for "
                         "this setting (`splitpriv pretrain-privatizer`)")
    state = load_file(str(directory / PRIVATIZER_WEIGHTS))
    for prefix, module in zip(_HALVES, (parts.bottom.privatizer, parts.top.privatizer_up)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return parts
