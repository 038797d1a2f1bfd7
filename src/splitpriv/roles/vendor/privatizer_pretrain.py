r"""Vendor-side pre-training of a learned privatizer (approach (a)): projection, up-projection and a noise-adapted
top (a causal LM's middle), distilled on public text from the clean model.

With :math:`f` the customer half (e.g. :math:`u = \mathrm{clip}_C(W h + b)`), :math:`g` the vendor half and
:math:`\mathrm{blocks}` the vendor's blocks, all three train jointly on public sentences :math:`x` (WikiText-2) with
the customers' mechanism :math:`M` in :math:`r` dimensions, :math:`h = \mathrm{bottom}(x)`:

- sequence classification (the top's blocks :math:`k..L-1`): the relative representation error

  .. math:: \min_{f, g, \theta}\; \mathbb{E}_{x, n}\; \mathrm{mean}_{t}\,
            \lVert \mathrm{blocks}_\theta(g(f(h) + n))_t - \mathrm{blocks}_0(h)_t \rVert^2 / d

- causal LM (the middle's blocks :math:`k..L-j-1`, every one trained in full): the next-token KL through the
  vendor's own copy of the customer's tail (last :math:`j` blocks, final norm, LM head; frozen)

  .. math:: \min_{f, g, \theta}\; \mathbb{E}_{x, n}\; \mathrm{mean}_{t}\, \mathrm{KL}\big(
            p_{\mathrm{tail}}(\cdot \mid \mathrm{mid}_0(h))_t \,\Vert\, p_{\mathrm{tail}}(\cdot \mid
            \mathrm{mid}_\theta(g(f(h) + n)))_t\big)

  KL, not the middle's output error: SmolLM2's residual stream carries a few massive coordinates (at k = 2 one
  reaches 394 where the median token's whole norm is 70), so an error on the middle's output spends itself on
  them; KL weighs every error by what the tail makes of it, which is what the customer's perplexity measures.
  Full adaptation, not LoRA: on CPU the backward pass through the middle costs about the same either way
  (SmolLM2, 26 middle blocks, batch 8 × 48 tokens: 3.4-4.7 s per step in full, 3.3-3.7 s with only the
  activations' gradients that LoRA needs), so LoRA would save little time and give up capacity.

Before distilling, the halves start from the principal components of the bottom's outputs on public text where the
privatizer has such a start (:meth:`~splitpriv.privacy.privatizer.Privatizer.fit_public`, the bottleneck's; the
default for causal LMs, off for classifiers so that their earlier folders are reproduced). Batches, optimiser and
folder writing are those of :mod:`splitpriv.roles.vendor.robust_top` (one machinery, two uses). The customer's
parts (the bottom's blocks and a causal LM's tail) stay bit-identical (checked); the projection learns which
:math:`r` directions of :math:`h` the clean model's computation needs most under that noise.

Output: an ordinary model folder the vendor serves (``splitpriv serve --model DIR``, ``--model DIR`` in process;
a causal LM's with its LM head) plus ``privatizer.safetensors``/``privatizer.json``
(:mod:`splitpriv.parts.privatizer`); a session that declares the same privatizer gets both halves, the customer's
inside its bottom package.

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

from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from splitpriv.privacy.privatizer import build_privatizer
from splitpriv.roles.vendor.robust_top import (
    META_FILE,
    RobustTopConfig,
    _batches,
    _check_writable,
    _encode,
    _heldout_error,
    _representation_error,
    cache_dir,
    fit_steps,
    public_sentences,
    write_model_folder,
)

N_PUBLIC_INIT = 128  # public sentences whose bottom outputs start the halves (fit_public)


def _privatized(batch: dict, half) -> dict:
    """``batch`` with the clean bottom output replaced by the customer half's output (what the mechanism gets)."""
    return {**batch, "clean_bottom": half(batch["clean_bottom"], batch["attention_mask"])}


def _next_token_kl(student, mechanism, batch: dict, generator) -> torch.Tensor:
    """Mean over real tokens of KL(clean next-token distribution ‖ the private split's), both read through the
    student's tail (frozen, the teacher's): ``batch["target"]`` is the clean middle's output."""
    mask = batch["attention_mask"]
    sent = mechanism(student.bottom.privatizer(batch["clean_bottom"], mask), mask, generator=generator)
    log_p = torch.log_softmax(student.tail(student.top(sent, mask), mask).float(), -1)
    with torch.no_grad():
        clean = torch.log_softmax(student.tail(batch["target"], mask).float(), -1)
    kl = torch.nn.functional.kl_div(log_p, clean, log_target=True, reduction="none").sum(-1)
    return kl[mask.bool()].mean()


def _heldout_kl(student, mechanism, batches, seed: int) -> float:
    """Held-out next-token KL in nats per real token (0 = the clean model's distribution), noise seeded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        total = sum(float(_next_token_kl(student, mechanism, b, generator)) * int(b["attention_mask"].sum())
                    for b in batches)
    return total / sum(int(b["attention_mask"].sum()) for b in batches)


def _objective(student, mechanism, causal: bool):
    """``(loss(batch, generator), heldout_error(batches, seed), what that error is)`` for the task."""
    half = student.bottom.privatizer
    if causal:
        return (lambda b, g: _next_token_kl(student, mechanism, b, g),
                lambda batches, seed: _heldout_kl(student, mechanism, batches, seed),
                "next-token KL(clean || private), nats per token")
    return (lambda b, g: _representation_error(student.top, mechanism, _privatized(b, half), g),
            lambda batches, seed: _heldout_error(student.top, mechanism, [_privatized(b, half) for b in batches],
                                                 seed),
            "relative representation error")


def _splits(privatizer, config: RobustTopConfig, model, task: str, n_tail_layers: int):
    """``(teacher, student, student_model, tokenizer)``: the clean split of ``model`` and a frozen copy carrying
    ``privatizer``; a split this model cannot serve is one ``ValueError`` before anything is fitted."""
    from splitpriv.models import load_model
    from splitpriv.parts import check_split_fits, split_model

    if task not in (SEQUENCE_CLASSIFICATION, CAUSAL_LM):
        raise ValueError(f"pretrain-privatizer trains for {SEQUENCE_CLASSIFICATION} or {CAUSAL_LM}, got {task!r}")
    teacher_model, tokenizer = load_model(model, num_labels=2, seed=config.seed, task=task)
    teacher_model.eval()
    j = n_tail_layers if task == CAUSAL_LM else (n_tail_layers or None)
    check_split_fits(teacher_model.config, config.n_bottom_layers, j, task=task, privatizer=privatizer,
                     vendor_blocks=1)
    teacher = split_model(teacher_model, config.n_bottom_layers, j)
    student_model = copy.deepcopy(teacher_model)
    student_model.requires_grad_(False)
    student = split_model(student_model, config.n_bottom_layers, j, privatizer=privatizer,
                          privatizer_seed=config.seed)
    return teacher, student, student_model, tokenizer


def _customer_parts(student) -> dict[str, torch.Tensor]:
    """The weights the customer receives, privatizer aside: the bottom's and (causal LM) the tail's."""
    state = {f"bottom.{k}": v.clone() for k, v in student.bottom.state_dict().items()
             if not k.startswith("privatizer.")}
    if student.tail is not None:
        state.update({f"tail.{k}": v.clone() for k, v in student.tail.state_dict().items()})
    return state


def start_from_public(built, student, tokenizer, texts, config, teacher) -> bool:
    """Start the halves from the bottom's outputs on the first public training sentences (``fit_public``)."""
    batch = _encode(tokenizer, texts[:N_PUBLIC_INIT], config, teacher)
    sample = batch["clean_bottom"][batch["attention_mask"].bool()]
    return built.fit_public(student.bottom.privatizer, student.top.privatizer_up, sample)


def pretrain_privatizer(privatizer, config: RobustTopConfig, out_dir: str | Path, *, model: str | None = None,
                        task: str = SEQUENCE_CLASSIFICATION, n_tail_layers: int = 0, public_init: bool | None = None,
                        progress: bool = True) -> dict:
    """Train ``privatizer``'s halves and the vendor's blocks of ``model`` (the top's, or a causal LM's middle with a
    tail of ``n_tail_layers`` blocks) against ``config``'s noise on public text (``config.steps`` steps,
    ``config.lr``, ...); write the model folder ``out_dir``; return its metadata. ``public_init``: start the halves
    from public principal components first (default: for causal LMs)."""
    from splitpriv.models import resolve_model_name
    from splitpriv.parts.privatizer import save_privatizer
    from splitpriv.provenance import versions

    built = build_privatizer(privatizer)
    if built is None:
        raise ValueError("pretrain-privatizer needs a privatizer, e.g. bottleneck:r=16")
    config = config.validate()
    if config.denoise != "none":
        raise ValueError("a privatizer's r-dimensional output cannot be projected to token embeddings (denoise)")
    causal = task == CAUSAL_LM
    _check_writable(Path(out_dir))
    started = time.perf_counter()
    teacher, student, student_model, tokenizer = _splits(built, config, model, task, n_tail_layers)
    customer_before = _customer_parts(student)
    half, up = student.bottom.privatizer, student.top.privatizer_up
    train_texts, heldout_texts = public_sentences(config)
    chunk = 16 if causal else 64  # a causal batch's logits are [B, T, V]: keep held-out batches small
    heldout = [_encode(tokenizer, heldout_texts[i:i + chunk], config, teacher)
               for i in range(0, len(heldout_texts), chunk)]
    initialised = (causal if public_init is None else public_init) and start_from_public(
        built, student, tokenizer, train_texts, config, teacher)
    trainable = [p for path in student.top.block_paths for p in student_model.get_submodule(path).parameters()]
    trainable += [*half.parameters(), *up.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    mechanism = config.privacy.build_mechanism()
    loss_of, heldout_error, metric = _objective(student, mechanism, causal)
    error_before = heldout_error(heldout, config.seed + 1)
    noise_rng = torch.Generator().manual_seed(config.seed + 2)
    batches = _batches(tokenizer, train_texts, config, teacher, torch.Generator().manual_seed(config.seed))
    losses = fit_steps(trainable, lambda b: loss_of(b, noise_rng), batches, config,
                       f"privatizer {built.name} ({config.privacy.mechanism})", progress)
    error_after = heldout_error(heldout, config.seed + 1)
    after = _customer_parts(student)
    if any(not torch.equal(v, after[k]) for k, v in customer_before.items()):
        raise RuntimeError("the customer's blocks changed during pre-training; refusing to save")
    meta = {
        "config": config.to_dict(), "privatizer": built.to_config(), "base_model": model,
        "base_model_path": resolve_model_name(model), "task": task,
        **({"n_tail_layers": n_tail_layers} if causal else {}), "public_init": bool(initialised),
        "n_train_sentences": len(train_texts), "n_heldout_sentences": len(heldout_texts),
        "heldout_error": metric, "heldout_error_before": error_before, "heldout_error_after": error_after,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "wall_time_s": time.perf_counter() - started,
        "versions": versions(),
    }
    half.requires_grad_(False)
    up.requires_grad_(False)
    write_model_folder(out_dir, student_model, tokenizer, meta,
                       lambda tmp: save_privatizer(student, tmp, {"base_model": model}))
    return meta


def pretrained_model(privatizer, config: RobustTopConfig, *, model: str | None = None,
                     task: str = SEQUENCE_CLASSIFICATION, n_tail_layers: int = 0, progress: bool = True) -> Path:
    """The folder of ``model`` with ``privatizer`` pre-trained as ``config`` says (:func:`pretrain_privatizer`,
    default ``public_init``), trained once and then read from ``$SPLITPRIV_CACHE/privatizers/<key>``."""
    import hashlib
    import json

    spec = build_privatizer(privatizer).to_config()
    key = hashlib.sha256(json.dumps({"top": config.validate().key(model), "privatizer": spec, "task": task,
                                     "j": n_tail_layers}, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir().parent / "privatizers" / key
    if not (folder / META_FILE).is_file():
        pretrain_privatizer(privatizer, config, folder, model=model, task=task, n_tail_layers=n_tail_layers,
                            progress=progress)
    return folder
