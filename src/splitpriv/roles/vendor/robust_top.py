"""Vendor-side noise adaptation: a top distilled on public text to read privatized representations.

Before any customer arrives, the vendor trains the blocks of its top (blocks k..L-1; the bottom and the
classification head stay as they are) so that, fed the bottom's output of *public* text plus the customer's noise,
they reproduce what the pretrained model computes from the clean input:

    min_θ  E_{x ~ public, n ~ M}  mean_{real tokens t} ‖ blocks_θ(bottom(x) + n)_t − blocks_0(bottom(x))_t ‖² / d

so the adapted blocks estimate the clean contextual representation from the privatized one, using the whole
sentence's context to undo per-token noise. With ``denoise`` (``"nn"``/``"map"``, k = 0 only) the blocks are fed
what a denoising vendor feeds them (:mod:`splitpriv.roles.vendor.denoise`: each received vector projected to a token
embedding), and learn to correct the projection's wrong tokens from context instead.

Customers then fine-tune (LoRA, BitFit, ...) on this model as on any other: it is an ordinary model folder
(``--model DIR``, ``splitpriv serve --model DIR``).

Threat model: the adaptation uses only the vendor's own weights and public text (WikiText-2), nothing of any
customer. The bottom is left bit-identical (checked before saving), so everything the customer sends, the d_chi
guarantee, and every inversion attack's success are exactly those of the same setting without adaptation; only
utility can move. Caveat for the privacy figures: an adapted top is itself a contextual denoiser the vendor holds.
Our learned inversion attack is contextual too (a 2-layer Transformer trained on the same kind of public pairs);
an inverter started from the adapted 6-block top would be a larger attack of that kind, not yet in the suite.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from splitpriv.config import PrivacyConfig

META_FILE = "robust_top.json"


@dataclass(frozen=True)
class RobustTopConfig:
    """What the vendor adapts to (``privacy``: the mechanism customers will use; ``n_bottom_layers``: the split)
    and how (``steps`` AdamW steps of ``batch_size`` public sentences at ``lr`` with linear warm-up/decay)."""

    privacy: PrivacyConfig
    n_bottom_layers: int = 0
    steps: int = 600
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-4
    warmup_ratio: float = 0.06
    n_public: int | None = None
    n_heldout: int = 256
    seed: int = 0
    denoise: str = "none"

    def validate(self) -> "RobustTopConfig":
        self.privacy.validate()
        if self.privacy.is_noiseless:
            raise ValueError("a robust top adapts to noise: it needs a privacy mechanism other than 'none'")
        for name in ("steps", "batch_size", "max_length", "n_heldout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"robust_top {name} must be a positive integer, got {value!r}")
        if isinstance(self.n_bottom_layers, bool) or not isinstance(self.n_bottom_layers, int) or self.n_bottom_layers < 0:
            raise ValueError(f"robust_top n_bottom_layers must be an integer >= 0, got {self.n_bottom_layers!r}")
        if self.n_public is not None and (isinstance(self.n_public, bool) or not isinstance(self.n_public, int)
                                          or self.n_public < self.batch_size):
            raise ValueError(f"robust_top n_public must be an integer >= batch_size, got {self.n_public!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"robust_top lr must be a finite number > 0, got {self.lr!r}")
        from splitpriv.contract import DENOISERS

        if self.denoise not in DENOISERS:
            raise ValueError(f"robust_top denoise must be one of {DENOISERS}, got {self.denoise!r}")
        if self.denoise != "none" and self.n_bottom_layers != 0:
            raise ValueError(f"robust_top denoise={self.denoise!r} projects embedding-layer outputs: it needs k = 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"robust_top warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        return self

    @classmethod
    def for_run(cls, options: dict, privacy: PrivacyConfig, n_bottom_layers: int,
                denoise: str = "none") -> "RobustTopConfig":
        """The adaptation a run asks for: its training ``options`` (a RunConfig's ``robust_top`` dict), at the run's
        own mechanism (CTI and label DP do not change the noise a top is adapted to), split and vendor denoising."""
        if not isinstance(options, dict):
            raise ValueError(f"robust_top must be a mapping of options, got {options!r}")
        unknown = set(options) - {f for f in cls.__dataclass_fields__ if f not in {"privacy", "n_bottom_layers",
                                                                                  "denoise"}}
        if unknown:
            raise ValueError(f"unknown robust_top options {sorted(unknown)}")
        noise = PrivacyConfig(privacy.mechanism_config)
        return cls(privacy=noise, n_bottom_layers=n_bottom_layers, denoise=denoise, **options).validate()

    def to_dict(self) -> dict:
        return {**asdict(self), "privacy": self.privacy.to_dict()}

    def key(self, base_model: str | None) -> str:
        config = {**self.to_dict(), "privacy": self.privacy.legacy_layout()}
        if config["denoise"] == "none":  # added later; folders adapted before keep their key
            del config["denoise"]
        return hashlib.sha256(json.dumps({"config": config, "base": base_model}, sort_keys=True)
                              .encode()).hexdigest()[:16]


def public_sentences(config: RobustTopConfig) -> tuple[list[str], list[str]]:
    """(training, held-out) public sentences: WikiText-2 valid + test, shuffled under ``seed``."""
    import random

    from splitpriv.data import public_corpus

    sentences = public_corpus()
    random.Random(config.seed).shuffle(sentences)
    heldout, train = sentences[: config.n_heldout], sentences[config.n_heldout:]
    if config.n_public is not None:
        train = train[: config.n_public]
    return train, heldout


def _representation_error(blocks, mechanism, batch, generator, projection=None) -> torch.Tensor:
    """Mean over real tokens of ‖blocks(bottom(x) + n) − clean target‖² / d (``batch`` carries the target);
    ``projection`` is the vendor's denoiser applied to the received vectors first."""
    hidden = mechanism(batch["clean_bottom"], batch["attention_mask"], generator=generator)
    if projection is not None:
        hidden = projection(hidden, batch["attention_mask"])
    out = blocks.encode(hidden, batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    return ((out - batch["target"]) ** 2)[mask].mean()


def _batches(tokenizer, sentences, config, teacher, rng):
    """Endless shuffled batches with the teacher's clean bottom output and clean last hidden state."""
    while True:
        order = torch.randperm(len(sentences), generator=rng).tolist()
        for i in range(0, len(order) - config.batch_size + 1, config.batch_size):
            yield _encode(tokenizer, [sentences[j] for j in order[i:i + config.batch_size]], config, teacher)


@torch.no_grad()
def _encode(tokenizer, texts, config, teacher) -> dict:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
    token_type_ids = enc.get("token_type_ids")
    clean = teacher.bottom(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=token_type_ids)
    return {"attention_mask": enc["attention_mask"], "clean_bottom": clean,
            "target": teacher.top.encode(clean, enc["attention_mask"])}


def _heldout_error(blocks, mechanism, batches, seed, projection=None) -> float:
    """Held-out representation error relative to the clean targets' power (0 = exact, 1 = no better than zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        error = sum(_representation_error(blocks, mechanism, b, generator, projection) for b in batches)
        power = sum((b["target"] ** 2)[b["attention_mask"].bool()].mean() for b in batches)
    return float(error / power)


def _bottom_state(split) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in split.bottom.state_dict().items()}


def _check_writable(out_dir: Path) -> None:
    """An existing ``out_dir`` is replaced only when it is an adapted model folder itself: never anything else."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file())):
        raise ValueError(f"{out_dir} exists and is not an adapted model folder: refusing to overwrite it "
                         "(choose a new --out)")


def distill_robust_top(config: RobustTopConfig, out_dir: str | Path, *, model: str | None = None,
                       progress: bool = True) -> dict:
    """Adapt the top's blocks of ``model`` to ``config``'s noise on public text; write the model folder to
    ``out_dir`` (``save_pretrained`` format of the encoder, its tokenizer, and ``robust_top.json`` with the config
    and the held-out representation error before/after). Returns that metadata."""
    from splitpriv.models import load_model, resolve_model_name
    from splitpriv.provenance import versions
    from splitpriv.parts import split_model

    config = config.validate()
    _check_writable(Path(out_dir))  # before the minutes of training, and again before replacing
    started = time.perf_counter()
    teacher_model, tokenizer = load_model(model, num_labels=2, seed=config.seed)
    teacher = split_model(teacher_model, config.n_bottom_layers)
    if teacher.n_bottom_layers == teacher.n_layers:
        raise ValueError("the split leaves no block on the vendor's side: nothing to adapt")
    student_model = copy.deepcopy(teacher_model)
    student = split_model(student_model, config.n_bottom_layers)
    bottom_before = _bottom_state(student)
    for p in student_model.parameters():
        p.requires_grad_(False)
    trainable = [p for path in student.top.block_paths for p in student_model.get_submodule(path).parameters()]
    for p in trainable:
        p.requires_grad_(True)
    mechanism = config.privacy.build_mechanism()
    projection = None
    if config.denoise != "none":
        from splitpriv.roles.vendor.denoise import TokenProjection

        projection = TokenProjection(student.bottom, tokenizer, method=config.denoise,
                                     declared_noise=mechanism.to_config())

    train_texts, heldout_texts = public_sentences(config)
    heldout = [_encode(tokenizer, heldout_texts[i:i + 64], config, teacher) for i in range(0, len(heldout_texts), 64)]
    error_before = _heldout_error(student.top, mechanism, heldout, config.seed + 1, projection)

    rng = torch.Generator().manual_seed(config.seed)
    noise_rng = torch.Generator().manual_seed(config.seed + 2)
    batches = _batches(tokenizer, train_texts, config, teacher, rng)
    losses = fit_steps(trainable, lambda batch: _representation_error(student.top, mechanism, batch, noise_rng,
                                                                      projection),
                       batches, config, f"robust top ({config.privacy.mechanism})", progress)
    error_after = _heldout_error(student.top, mechanism, heldout, config.seed + 1, projection)

    after = student.bottom.state_dict()
    if any(not torch.equal(bottom_before[k], after[k]) for k in bottom_before):
        raise RuntimeError("the bottom changed during adaptation; refusing to save a model customers would mis-split")
    meta = {
        "config": config.to_dict(), "base_model": model, "base_model_path": resolve_model_name(model),
        "n_train_sentences": len(train_texts), "n_heldout_sentences": len(heldout_texts),
        "heldout_error_before": error_before, "heldout_error_after": error_after,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "wall_time_s": time.perf_counter() - started,
        "versions": versions(),
    }
    write_model_folder(out_dir, student_model, tokenizer, meta)
    return meta


def fit_steps(trainable, loss_of, batches, config, desc: str, progress: bool) -> list[float]:
    """``config.steps`` AdamW steps on ``loss_of(next(batches))`` (gradient norm clipped to 1, linear warm-up over
    ``config.warmup_ratio`` then decay); returns the losses."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * config.steps), config.steps)
    losses = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    for _ in bar:
        loss = loss_of(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def write_model_folder(out_dir: str | Path, model, tokenizer, meta: dict, write_more=None) -> Path:
    """Atomically replace ``out_dir`` (only an adapted model folder, see :func:`_check_writable`) with the encoder
    of ``model`` (a causal LM whole: its LM head is the customers' tail), its tokenizer, ``robust_top.json`` =
    ``meta`` and whatever ``write_more(tmp_dir)`` adds."""
    from splitpriv.models import CAUSAL_LM, family_of

    out_dir = Path(out_dir)
    _check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        # a classifier's head is fresh in every session (its label count); a causal LM's head is the model's
        (model if family_of(model).task_of(model) == CAUSAL_LM else model.base_model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if write_more is not None:
            write_more(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def cache_dir() -> Path:
    """Where adapted models are kept between runs: ``$SPLITPRIV_CACHE/robust_top`` (default ``~/.cache/splitpriv``).
    They are model weights, so they never go into ``results/``."""
    return Path(os.environ.get("SPLITPRIV_CACHE", Path.home() / ".cache" / "splitpriv")) / "robust_top"


def robust_model(config: RobustTopConfig, *, model: str | None = None, progress: bool = True) -> Path:
    """The folder of ``model`` adapted as ``config`` says, distilled once and then read from :func:`cache_dir`."""
    folder = cache_dir() / config.validate().key(model)
    if not (folder / META_FILE).is_file():
        distill_robust_top(config, folder, model=model, progress=progress)
    return folder


def adaptation_of(folder: str | Path) -> dict | None:
    """The ``robust_top.json`` metadata of an adapted model folder (None for any other model)."""
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def base_model_of(model: str | None) -> str | None:
    """The clean model an adapted folder (this module's, or a pre-trained privatizer's) was distilled from: what its
    centralized baseline must train; any other model is its own base."""
    meta = adaptation_of(model) if model is not None and Path(model).is_dir() else None
    return meta.get("base_model") if meta is not None else model
