r"""Vendor-side pre-training of a learned privatizer (approach (a)): projection, up-projection and a noise-adapted
top, distilled on public text from the clean model.

With :math:`f` the customer half (e.g. :math:`u = \mathrm{clip}_C(W h + b)`), :math:`g` the vendor half and
:math:`\mathrm{blocks}` the top's blocks, all three train jointly on public sentences :math:`x` (WikiText-2) with the
customers' mechanism :math:`M` in :math:`r` dimensions:

.. math:: \min_{f, g, \theta}\; \mathbb{E}_{x, n}\; \mathrm{mean}_{t}\,
          \lVert \mathrm{blocks}_\theta(g(f(h) + n))_t - \mathrm{blocks}_0(h)_t \rVert^2 / d, \quad h = \mathrm{bottom}(x)

the loss, batches, optimiser and folder writing of :mod:`splitpriv.roles.vendor.robust_top` (one machinery, two uses).
The bottom's own weights stay bit-identical (checked); the projection learns which :math:`r` directions of
:math:`h` the clean model's computation needs most under that noise.

Output: an ordinary model folder the vendor serves (``splitpriv serve --model DIR``, ``--model DIR`` in process)
plus ``privatizer.safetensors``/``privatizer.json`` (:mod:`splitpriv.parts.privatizer`); a session that declares
the same privatizer gets both halves, the customer's inside its bottom package.

Threat model: public text and the vendor's own weights only. Whatever the projection learns, the privatizer's
guarantee (e.g. the bottleneck's :math:`\lVert u\rVert \le C`) holds, since it is enforced after the projection,
and the vendor knows the projection anyway. Distillation pushes :math:`f` to keep as much of :math:`h` as the noise
allows, token identity included: what the noise leaves of it is for the attacks to measure.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from splitpriv.privacy.privatizer import build_privatizer
from splitpriv.roles.vendor.robust_top import (
    RobustTopConfig,
    _batches,
    _check_writable,
    _encode,
    _heldout_error,
    _representation_error,
    fit_steps,
    public_sentences,
    write_model_folder,
)


def _privatized(batch: dict, half) -> dict:
    """``batch`` with the clean bottom output replaced by the customer half's output (what the mechanism gets)."""
    return {**batch, "clean_bottom": half(batch["clean_bottom"], batch["attention_mask"])}


def pretrain_privatizer(privatizer, config: RobustTopConfig, out_dir: str | Path, *, model: str | None = None,
                        progress: bool = True) -> dict:
    """Train ``privatizer``'s halves and the top's blocks of ``model`` against ``config``'s noise on public text
    (``config.steps`` steps, ``config.lr``, ...); write the model folder ``out_dir``; return its metadata."""
    from splitpriv.models import load_model, resolve_model_name
    from splitpriv.provenance import versions
    from splitpriv.parts import split_model
    from splitpriv.parts.privatizer import save_privatizer

    built = build_privatizer(privatizer)
    if built is None:
        raise ValueError("pretrain-privatizer needs a privatizer, e.g. bottleneck:r=16")
    config = config.validate()
    if config.denoise != "none":
        raise ValueError("a privatizer's r-dimensional output cannot be projected to token embeddings (denoise)")
    _check_writable(Path(out_dir))
    started = time.perf_counter()
    teacher_model, tokenizer = load_model(model, num_labels=2, seed=config.seed)
    teacher_model.eval()
    teacher = split_model(teacher_model, config.n_bottom_layers)
    if teacher.n_bottom_layers == teacher.n_layers:
        raise ValueError("the split leaves no block on the vendor's side: nothing to adapt")
    student_model = copy.deepcopy(teacher_model)
    student_model.requires_grad_(False)
    student = split_model(student_model, config.n_bottom_layers, privatizer=built, privatizer_seed=config.seed)
    blocks_before = {k: v.clone() for k, v in student.bottom.state_dict().items() if not k.startswith("privatizer.")}
    half, up = student.bottom.privatizer, student.top.privatizer_up
    trainable = [p for path in student.top.block_paths for p in student_model.get_submodule(path).parameters()]
    trainable += [*half.parameters(), *up.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    mechanism = config.privacy.build_mechanism()

    train_texts, heldout_texts = public_sentences(config)
    heldout = [_encode(tokenizer, heldout_texts[i:i + 64], config, teacher) for i in range(0, len(heldout_texts), 64)]

    def heldout_error() -> float:
        with torch.no_grad():
            return _heldout_error(student.top, mechanism, [_privatized(b, half) for b in heldout], config.seed + 1)

    error_before = heldout_error()
    noise_rng = torch.Generator().manual_seed(config.seed + 2)
    batches = _batches(tokenizer, train_texts, config, teacher, torch.Generator().manual_seed(config.seed))
    losses = fit_steps(trainable, lambda b: _representation_error(student.top, mechanism, _privatized(b, half),
                                                                  noise_rng),
                       batches, config, f"privatizer {built.name} ({config.privacy.mechanism})", progress)
    error_after = heldout_error()
    after = student.bottom.state_dict()
    if any(not torch.equal(v, after[k]) for k, v in blocks_before.items()):
        raise RuntimeError("the bottom's blocks changed during pre-training; refusing to save")
    meta = {
        "config": config.to_dict(), "privatizer": built.to_config(), "base_model": model,
        "base_model_path": resolve_model_name(model), "n_train_sentences": len(train_texts),
        "n_heldout_sentences": len(heldout_texts), "heldout_error_before": error_before,
        "heldout_error_after": error_after, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "wall_time_s": time.perf_counter() - started, "versions": versions(),
    }
    half.requires_grad_(False)
    up.requires_grad_(False)
    write_model_folder(out_dir, student_model, tokenizer, meta,
                       lambda tmp: save_privatizer(student, tmp, {"base_model": model}))
    return meta
