"""The customer: holds its data, the bottom it downloaded, its end of the model (the task's: a classification head
it may keep, a causal LM's tail) and the privacy mechanism. One class for every task; the task
(:mod:`splitpriv.tasks`, read from the session) supplies batches, loss and the end.

A training step: bottom forward → privatize → send (representations, mask) → receive the top's outputs → the end
and the loss at home → send ∂L/∂outputs → (trained bottom) receive ∂L/∂representations and back-propagate through
the bottom with its own optimizer. Inference runs the same bottom and mechanism; the vendor returns outputs.
Generation (causal LM): one privatized vector up and one d-vector down per token; the vendor keeps the cache.

What leaves the machine (the threat model's view): privatized representations with padding positions zeroed (at
k ≥ 1 a padding position's hidden state mixes in the sentence's tokens, and the top never reads it), the
attention mask, and the gradient of the loss w.r.t. the vendor's outputs. With the vendor-held head that gradient
is softmax(logits) − onehot(label) and reveals the label exactly; ``head="customer"`` closes that channel. A causal
LM's vendor never sees token ids, targets or V-sized logits, but ∂L/∂(middle's output) is linear in the one-hot
targets through the tail it shipped and gives the response tokens back, whatever ``j``
(:mod:`splitpriv.attacks.response`); ``grad_clip``/``grad_sigma`` clip and noise it per example before it leaves
(:mod:`splitpriv.privacy.gradient_noise`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from splitpriv.batching import collate, encode_texts, eval_batches, num_steps, training_order
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.parts import PartCache, load_bottom, save_bottom
from splitpriv.contract import (
    WIRE_DTYPES,
    BackwardRequest,
    DecodeRequest,
    ForwardRequest,
    PredictRequest,
    SessionConfig,
    unpack_files,
)
from splitpriv.roles.customer.steps import backward_resending, progress_bar, step_optimizer
from splitpriv.seeding import derive_seed, generator, step_rng
from splitpriv.tasks import task_of
from splitpriv.tasks.causal_lm import exact_match, perplexity, sample_next

CTI_FILE = "cti.json"


class Customer:
    """The customer's state: bottom (+ optimizer when trained), its end of the model, tokenizer, mechanism, CTI,
    noise generator, and the noise-once cache. Talks to the vendor only through ``transport``."""

    def __init__(self, transport, session: SessionConfig, privacy: PrivacyConfig, train: TrainConfig,
                 files: dict[str, bytes] | None = None):
        self.transport = transport
        self.session = session.validate()
        self.task = task_of(self.session.task)
        self.privacy = privacy.validate().for_training(train)
        self.train_config = train.validate(self.privacy)
        if (train.bottom == "trained") != session.train_bottom:
            raise ValueError("the session's train_bottom must match the customer's bottom mode")
        self.mechanism = privacy.build_mechanism()
        self.wire_dtype = WIRE_DTYPES[train.wire_dtype]
        self.noise = generator(train.noise_seed)
        self.cti = None
        self.journal = None  # a roles.customer.journal.Journal makes the run resumable (written before every forward)
        self._cache: dict[int, torch.Tensor] = {}
        self._warm_started = False
        self._load_files(files if files is not None else unpack_files(transport.bottom_package()))
        shipped = getattr(self.bottom.privatizer, "privatizer_config", None)
        if shipped != self.privacy.privatizer or shipped != session.privatizer:
            raise ValueError(f"the bottom holds privatizer {shipped}, but this customer privatizes with "
                             f"{self.privacy.privatizer} and the session declares {session.privatizer}")
        self.bottom_optimizer = self.bottom_scheduler = None
        self.head_optimizer = self.head_scheduler = None
        if train.bottom == "trained":
            self.bottom.requires_grad_(True)
            self.bottom_optimizer, self.bottom_scheduler = self._optimizer(self._bottom_groups(), train.bottom_lr)
        else:
            self.bottom.requires_grad_(False)
        if self.end is not None and self.task.end_trains:
            self.end.requires_grad_(True)
            self.head_optimizer, self.head_scheduler = self._optimizer(self.end.parameters(), session.lr)

    @classmethod
    def open(cls, transport, session: SessionConfig, privacy: PrivacyConfig, train: TrainConfig) -> "Customer":
        """Open a session with the vendor behind ``transport`` and download its bottom."""
        train.validate(privacy)
        privacy.validate()
        transport.open_session(session)
        return cls(transport, session, privacy, train)

    @classmethod
    def restore(cls, transport, directory: str | Path, privacy: PrivacyConfig, train: TrainConfig) -> "Customer":
        """The customer of a finished run (``Customer.save`` output) on a session ``transport`` is attached to."""
        from splitpriv.privacy import ContributingTokens

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no customer state at {directory}")
        session = SessionConfig.from_dict(transport.status()["config"])
        files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
        customer = cls(transport, session, privacy, train, files=files)
        if (directory / CTI_FILE).is_file():
            customer.cti = ContributingTokens.load(directory / CTI_FILE)
        return customer

    def _load_files(self, files: dict[str, bytes]) -> None:
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            self.bottom = load_bottom(tmp)
            self.tokenizer = AutoTokenizer.from_pretrained(tmp)
            self.end = self.task.customer_end(Path(tmp))

    @property
    def head(self):
        """The classification head the customer keeps (``None`` when the vendor holds it, or for other tasks)."""
        return self.end if self.task.end_trains else None

    @property
    def tail(self):
        """A causal LM's tail (``None`` for other tasks)."""
        return None if self.task.end_trains else self.end

    def _bottom_groups(self) -> list[dict]:
        """The trained bottom's parameters; a privatizer's customer half at ``privatizer_lr`` when one is set (a
        fresh projection needs a larger step than pretrained embeddings and blocks)."""
        lr = self.train_config.privatizer_lr
        if lr is None or self.bottom.privatizer is None:
            return [{"params": list(self.bottom.parameters())}]
        own = {id(p) for p in self.bottom.privatizer.parameters()}
        return [{"params": [p for p in self.bottom.parameters() if id(p) not in own]},
                {"params": list(self.bottom.privatizer.parameters()), "lr": lr}]

    def _optimizer(self, params, lr: float):
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.session.weight_decay)
        total = self.session.total_steps
        return opt, get_linear_schedule_with_warmup(opt, int(self.session.warmup_ratio * total), total)

    # -- privatization ------------------------------------------------------------------------------------------

    def fit_cti(self, encodings: list[list[int]], labels: list[int]) -> None:
        """Select contributing tokens on the customer's own training data (the per-token η depends on the token
        id only, never on the label of the sample being sent)."""
        from splitpriv.privacy import ContributingTokens, CTIConfig

        config = CTIConfig(fraction=self.privacy.cti_fraction, eta_multiplier=self.privacy.cti_multiplier)
        self.cti = ContributingTokens.fit(encodings, labels, config=config, special_ids=self.tokenizer.all_special_ids)

    def privatize(self, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z = h + n on real tokens (n from the mechanism, scaled per token by CTI), zeros at padding."""
        from splitpriv.privacy import privatize

        scale = self.cti.noise_scale(input_ids) if self.cti is not None else None
        return privatize(self.mechanism, hidden, mask, generator=self.noise, noise_scale=scale)

    def _representations(self, step: int, index: torch.Tensor | None, ids, mask, train: bool):
        """Privatized representations to send, and the bottom's output when it is being trained."""
        if index is not None and self.privacy.noise == "once" and all(int(i) in self._cache for i in index):
            z = torch.zeros(ids.shape[0], ids.shape[1], next(iter(self._cache.values())).shape[-1])
            for row, i in enumerate(index.tolist()):
                cached = self._cache[i]
                z[row, : cached.shape[0]] = cached
            return z, None
        trained = train and self.train_config.bottom == "trained"
        self.bottom.train(trained and self.session.dropout)
        with torch.set_grad_enabled(trained), step_rng(self.train_config.seed, "customer", step):
            hidden = self.bottom(input_ids=ids, attention_mask=mask)
        z = self.privatize(hidden.detach(), ids, mask)
        if index is not None and self.privacy.noise == "once":
            for row, i in enumerate(index.tolist()):
                self._cache[i] = z[row, : int(mask[row].sum())].clone()
        return z, (hidden if trained else None)

    def _to_wire(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` in the wire dtype (``TrainConfig.wire_dtype``); float16 tops out at 65504, so very large noise
        (a tiny η) is refused here rather than sent as Inf; so is a coordinate above the vendors' documented limit
        (:data:`splitpriv.contract.limits.MAX_ABS_VALUE`), which a vendor would refuse."""
        from splitpriv.contract.limits import MAX_ABS_VALUE

        wire = z if z.dtype == self.wire_dtype else z.to(self.wire_dtype)
        if not bool(torch.isfinite(wire).all()) and bool(torch.isfinite(z).all()):
            raise ValueError(f"representations overflow {self.train_config.wire_dtype} on the wire (largest magnitude "
                             f"{float(z.abs().max()):.3g}); use wire_dtype 'bfloat16' or 'float32'")
        largest = float(z.detach().abs().max()) if z.numel() else 0.0
        if largest > MAX_ABS_VALUE:
            raise ValueError(f"a privatized representation has a coordinate of magnitude {largest:.3g}, above the "
                             f"vendor's limit |x| <= {MAX_ABS_VALUE:g}: the noise is too large (a smaller scale, "
                             "e.g. a larger eta)")
        return wire

    def randomize_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """RR_ε on the labels used for the loss, drawn once per sample (label DP; see privacy.label_dp)."""
        from splitpriv.privacy.label_dp import randomized_response

        seed = self.train_config.noise_seed
        g = generator(None if seed is None else derive_seed(seed, "label-dp"))
        return randomized_response(labels, self.session.num_labels, float(self.privacy.label_dp_epsilon), generator=g)

    def _defend(self, grad: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
        """The gradient to return: as computed, or clipped per example and noised (``grad_clip``/``grad_sigma``,
        :mod:`splitpriv.privacy.gradient_noise`) with this step's own generator."""
        if not self.privacy.defends_gradients:
            return grad
        from splitpriv.privacy.gradient_noise import clip_and_noise

        seed = self.train_config.noise_seed
        g = generator(None if seed is None else derive_seed(seed, "gradient-noise", step))
        return clip_and_noise(grad, mask, float(self.privacy.grad_clip), float(self.privacy.grad_sigma), generator=g)

    # -- training -----------------------------------------------------------------------------------------------

    def train_step(self, step: int, ids: torch.Tensor, mask: torch.Tensor, targets,
                   index: torch.Tensor | None = None) -> float:
        """One step; ``targets`` are what the task's loss takes (labels, or a causal LM's loss mask)."""
        z, hidden = self._representations(step, index, ids, mask, train=True)
        if self.journal is not None:
            self.journal.record(step, self, index)
        sid = self.transport.session.session_id
        request = ForwardRequest(session_id=sid, step=step, hidden=self._to_wire(z), attention_mask=mask)
        outputs = self.transport.forward(request)
        received = self.task.received(outputs.outputs).detach().requires_grad_(True)
        logits = self.task.apply_end(self.end, received, mask, step=step, train=True, seed=self.train_config.seed,
                                     dropout=self.session.dropout)
        loss = self.task.loss(logits, ids, mask, targets)
        if self.journal is not None:  # before the backward: once the vendor completes the step, its loss is kept
            self.journal.loss(step, float(loss.detach()))
        loss.backward()
        result = backward_resending(self.transport, request, outputs,
                                    BackwardRequest(session_id=sid, step=step, grad_outputs=self._defend(received.grad,
                                                                                                       mask, step)))
        if self.head_optimizer is not None:
            step_optimizer(self.head_optimizer, self.head_scheduler)
        if hidden is not None:
            if result.grad_hidden is None:
                raise RuntimeError("the vendor returned no gradient for the bottom; was the session opened frozen?")
            hidden.backward(result.grad_hidden.to(hidden.dtype) * mask.unsqueeze(-1).to(hidden.dtype))
            step_optimizer(self.bottom_optimizer, self.bottom_scheduler)
        return float(loss.detach())

    def fit(self, data, labels=None, *, progress: bool = True, on_step=None, start_step: int = 0) -> dict:
        """Train for ``epochs`` over the task's data (texts and labels; a causal LM's encoded examples); returns
        losses and throughput. ``start_step``: the steps up to it are done already (a resumed run, its journal
        restored)."""
        cfg = self.train_config
        batches = self.task.batches(self, data, labels)
        warm = self._prepare_labels(batches, progress) if batches.labels is not None else {}
        total = num_steps(batches.n, cfg.batch_size, cfg.epochs)
        if total > self.session.total_steps:
            raise ValueError(f"{total} steps planned but the session was opened for {self.session.total_steps}")
        losses: list[float] = []
        start = time.perf_counter()
        bar = progress_bar(total, "train", progress)
        for step, _, index in training_order(batches.n, cfg.batch_size, cfg.epochs, cfg.seed):
            if step <= start_step:
                bar.update(1)
                continue
            losses.append(self.train_step(step, *batches.batch(index)))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step:
                on_step(step, losses[-1])
        bar.close()
        seconds = time.perf_counter() - start
        done = max(total - start_step, 0) / max(total, 1)  # the share of the steps this call ran
        return {"losses": losses, "train_seconds": seconds,
                "train_samples_per_s": batches.n * cfg.epochs * done / max(seconds, 1e-9), **warm}

    def _prepare_labels(self, batches, progress: bool = False) -> dict:
        """For labelled data: CTI selection, label DP, the privatizer's warm start and the journal's labels."""
        cfg = self.train_config
        if self.privacy.cti and self.cti is None:
            self.fit_cti(batches.encodings, batches.labels.tolist())
        if self.privacy.label_dp_epsilon is not None:
            batches.labels = self.randomize_labels(batches.labels)
        warm = {}
        if cfg.privatizer_warm_start and not self._warm_started:
            # deterministic in the seed (own generator, never the customer's noise stream): a resumed run that
            # repeats it gets the same projection back
            from splitpriv.roles.customer.warm_start import warm_start_privatizer

            warm = warm_start_privatizer(self.bottom, self.mechanism, batches.encodings, batches.labels,
                                         self.session.num_labels, self.tokenizer.pad_token_id,
                                         epochs=cfg.privatizer_warm_start, lr=cfg.privatizer_lr or 1e-2,
                                         batch_size=cfg.batch_size, seed=cfg.seed, train_blocks=cfg.warm_start_blocks,
                                         blocks_lr=cfg.bottom_lr, progress=progress)
            self._warm_started = True
        if self.journal is not None:
            batches.labels = self.journal.start(self, batches.labels)
        return warm

    # -- private inference --------------------------------------------------------------------------------------

    @torch.no_grad()
    def logits_of(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One batch through bottom → mechanism (fresh noise) → vendor → the customer's end; no label anywhere."""
        request = PredictRequest(session_id=self.transport.session.session_id, hidden=self.outgoing(ids, mask),
                                 attention_mask=mask)
        received = self.task.received(self.transport.predict(request).outputs)
        return self.task.apply_end(self.end, received, mask, step=0, train=False, seed=self.train_config.seed,
                                   dropout=False)

    @torch.no_grad()
    def predict_logits(self, texts: list[str], *, progress: bool = False) -> torch.Tensor:
        """One row of logits per text (tasks that predict labels)."""
        if not self.task.predicts_labels:
            raise ValueError(f"a {self.task.value} session generates text: use `splitpriv generate` "
                             "(Customer.generate)")
        encodings = encode_texts(self.tokenizer, texts, self.train_config.max_length)
        out = []
        bar = progress_bar(len(encodings), "predict", progress)
        for index in eval_batches(len(encodings), self.train_config.eval_batch_size):
            out.append(self.logits_of(*collate(encodings, index, self.tokenizer.pad_token_id)))
            bar.update(len(index))
        bar.close()
        return torch.cat(out) if out else torch.zeros(0, self.session.num_labels)

    @torch.no_grad()
    def outgoing(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What private inference sends for one batch: bottom (and privatizer) → mechanism, in the wire dtype."""
        z, _ = self._representations(0, None, ids, mask, train=False)
        return self._to_wire(z)

    def predict(self, texts: list[str]) -> list[int]:
        return self.predict_logits(texts).argmax(-1).tolist()

    def evaluate(self, texts: list[str], labels: list[int], *, progress: bool = True) -> dict:
        from types import SimpleNamespace

        return self.task.score(self, SimpleNamespace(texts=texts, labels=labels), progress=progress)

    def perplexity(self, examples) -> dict:
        """exp(mean next-token loss) over the examples' target tokens, through the vendor (fresh noise)."""
        return perplexity(self.logits_of, examples, self.tokenizer.pad_token_id, self.train_config.eval_batch_size)

    def exact_match(self, examples, max_new_tokens: int = 8) -> dict:
        return exact_match(self.generate, self.tokenizer, examples, max_new_tokens)

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int = 32, *, temperature: float = 0.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, stop_ids=None) -> list[int]:
        """New token ids after ``prompt_ids`` (a causal LM's tail at home): one privatized vector up (d wide, or r
        through a privatizer, applied to each new token alone) and one d-vector down per token."""
        if self.tail is None:
            raise ValueError(f"a {self.task.value} session has no tail to generate with: use `splitpriv predict`")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        stop = set(stop_ids if stop_ids is not None else [self.tokenizer.eos_token_id])
        sid = self.transport.session.session_id
        bottom_cache, tail_cache = PartCache(), PartCache()
        self.bottom.eval()
        ids, out = torch.tensor([prompt_ids]), []
        for _ in range(max_new_tokens):
            ones = torch.ones_like(ids)
            z = self.privatize(self.bottom(input_ids=ids, cache=bottom_cache), ids, ones)
            reply = self.transport.decode(DecodeRequest(session_id=sid, hidden=self._to_wire(z), attention_mask=ones,
                                                        reset=not out))
            logits = self.tail(reply.outputs.float(), cache=tail_cache)[0, -1]
            token = sample_next(logits, temperature, top_p, generator)
            out.append(token)
            if token in stop:
                break
            ids = torch.tensor([[token]])
        return out

    def save(self, directory: str | Path) -> Path:
        """The customer's side of a run: bottom (as trained), tokenizer, its end, CTI selection."""
        directory = Path(directory)
        save_bottom(self.bottom, directory, self.tokenizer)
        self.task.save_end(self.end, directory)
        if self.cti is not None:
            self.cti.save(directory / CTI_FILE)
        return directory
