"""The vendor: keeps the top of its model, tunes it for each customer, and never sees text, token ids or labels.

:class:`Vendor` is the multi-tenant registry (one frozen base model per label count, shared by every session);
:class:`VendorSession` holds one customer's state: its tuned top (only its own trainable deltas), optimizer,
learning-rate schedule and the bookkeeping that makes a repeated step harmless.

Threat model, from the vendor's side: the vendor is honest-but-curious. It follows the protocol, and everything it
receives (see :mod:`splitpriv.protocol`) is exactly what ``splitpriv.attacks`` assumes an attacker has.

Persistence (``Vendor(model, state_dir=DIR)``): each session is written to ``DIR/sessions/<session_id>/`` on
:meth:`Vendor.checkpoint`, after every ``checkpoint_every`` completed steps, and for every open session by
:meth:`Vendor.checkpoint_all` (the service calls it on shutdown). A new ``Vendor`` with the same ``state_dir`` loads
them again: the same token is accepted and training continues at ``completed_step + 1`` with the results an
uninterrupted run would give. One checkpoint is a directory ``ckpt-<step>-<random>/`` holding

* ``top/``: the tuned top as :meth:`TunedTop.save` writes it (``peft`` format for LoRA),
* ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()`` (AdamW moments and step counts),
* ``session.json``: the session config, the sha256 of the token (never the token), the completed step, the
  trainable weights' names in optimizer order, and the optimizer's and scheduler's non-tensor state as JSON,
* ``last_backward.msg``: the answer to the last backward, so that its retry is harmless across a restart too.

No pickle anywhere. A checkpoint directory is written under a temporary name and renamed into place, then the
``CURRENT`` file naming it is replaced atomically (``os.replace``); older checkpoints are removed after that, so a
crash at any moment leaves the previous or the new checkpoint, never a mix. What is not saved: a forward whose
backward has not arrived (its autograd graph); after a restart the customer repeats that step's forward.
Closing a session deletes its directory: a closed session can never be reached again, and the vendor keeps no
customer-derived state it cannot use (copy an exported top elsewhere first to keep it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from splitpriv.errors import Forbidden, OutOfOrder, UnknownSession
from splitpriv.models import load_model
from splitpriv.protocol import (
    WIRE_DTYPES,
    BackwardRequest,
    BackwardResult,
    ForwardRequest,
    Outputs,
    PredictRequest,
    ProtocolError,
    SessionConfig,
    SessionInfo,
    decode,
    pack_files,
)
from splitpriv.seeding import step_rng
from splitpriv.split import HEAD_WEIGHTS, SplitModel, save_bottom, split_model
from splitpriv.tuning import TunedTop, apply_tuning

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
SESSIONS_DIR = "sessions"
CURRENT = "CURRENT"
SESSION_FILE = "session.json"
OPTIMIZER_FILE = "optimizer.safetensors"
LAST_BACKWARD_FILE = "last_backward.msg"
TOP_DIR = "top"

# Dropout (and LoRA's initialisation) draw from torch's process-global RNG, which ``step_rng`` reseeds and then
# restores. Two sessions doing that at once from two threads would draw from each other's streams, so a session's
# results would depend on its neighbours'. Every use of the global RNG on the vendor's side holds this lock (the
# forward passes of different sessions run one at a time; on CPU each one already uses every core).
_RNG_LOCK = threading.RLock()


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Hand the heap pages freed by a step back to the operating system (glibc ``malloc_trim(0)``).

    glibc's dynamic mmap threshold moves the large activation tensors of a step onto the heap after the first free;
    freed there, they stay resident whenever a long-lived small allocation sits above them, so a vendor with many
    sessions grows by tens of MB per session (``benchmarks/tenants.py`` measured 3.2 GiB for 50 LoRA sessions,
    0.2 GiB with this call after every backward). A no-op where the C library has no ``malloc_trim``.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def token_hash(token: str) -> str:
    """What the vendor keeps of a session token (in memory and on disk): its sha256, hex."""
    return hashlib.sha256(str(token).encode()).hexdigest()


class SessionLimit(ProtocolError):
    """The vendor already holds as many sessions as it allows."""


def check_representations(hidden: torch.Tensor, attention_mask: torch.Tensor, d_model: int, max_tokens: int):
    """Validate received representations at the boundary; returns them as float32 and the mask as long."""
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in WIRE_DTYPES.values():
        raise ProtocolError(f"hidden must be a float tensor ({', '.join(WIRE_DTYPES)}), got {getattr(hidden, 'dtype', type(hidden))}")
    if hidden.dim() != 3 or hidden.shape[-1] != d_model:
        raise ProtocolError(f"hidden must have shape [batch, tokens, {d_model}], got {list(hidden.shape)}")
    if hidden.shape[0] < 1 or hidden.shape[1] < 1:
        raise ProtocolError(f"hidden is empty: shape {list(hidden.shape)}")
    if hidden.shape[1] > max_tokens:
        raise ProtocolError(f"{hidden.shape[1]} tokens exceed this model's maximum of {max_tokens}")
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ProtocolError(
            f"attention_mask shape {list(attention_mask.shape)} does not match hidden [batch, tokens] = "
            f"{list(hidden.shape[:2])}"
        )
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise ProtocolError(f"attention_mask must hold integers 0/1, got dtype {attention_mask.dtype}")
    mask = attention_mask.long()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ProtocolError("attention_mask must hold only 0 and 1")
    if not bool((mask.sum(dim=1) > 0).all()):
        raise ProtocolError("every sequence needs at least one real token (a row of the mask is all zeros)")
    if not bool(torch.isfinite(hidden).all()):
        raise ProtocolError("hidden contains NaN or Inf")
    return hidden.float(), mask


@dataclass
class _Pending:
    step: int
    hidden: torch.Tensor
    outputs: torch.Tensor
    reply: Outputs


class VendorSession:
    """One customer's tuned top, optimizer and step bookkeeping.

    Steps are numbered 1, 2, ... A forward for step ``s`` must follow a completed step ``s - 1``; repeating the
    forward or backward of the latest step (a retry after a lost answer) returns the stored answer without
    computing or stepping the optimizer again.
    """

    def __init__(self, session_id: str, token: str | None, config: SessionConfig, parts: SplitModel, tuned: TunedTop,
                 *, token_sha256: str | None = None, projection=None):
        from transformers import get_linear_schedule_with_warmup

        if (token is None) == (token_sha256 is None):
            raise ValueError("give a session either its token or the sha256 of it")
        self.session_id = session_id
        self.token_sha256 = token_sha256 or token_hash(token)
        self.config = config
        self.parts = parts
        self.tuned = tuned
        self.projection = projection  # TokenProjection when config.denoise != "none" (shared by the vendor's sessions)
        self.d_model = parts.top.d_model
        self.max_tokens = int(getattr(parts.config, "max_position_embeddings", 512))
        self.optimizer = torch.optim.AdamW(tuned.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * config.total_steps), config.total_steps
        )
        self.completed_step = 0
        self.checkpointed_step: int | None = None
        self.checkpoint_path: Path | None = None
        self.closed = False
        self._pending: _Pending | None = None
        self._last_backward: BackwardResult | None = None
        self.lock = threading.Lock()

    def check_token(self, token: str | None) -> bool:
        """Constant-time comparison of ``token``'s hash with the session's."""
        return bool(token) and hmac.compare_digest(self.token_sha256, token_hash(token))

    def _check_open(self) -> None:
        if self.closed:
            raise UnknownSession(f"unknown or closed session {self.session_id!r}")

    def _run_top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            hidden = self.projection(hidden, mask)
        top = self.tuned.module
        if self.config.head == "customer":
            return top.encode(hidden, mask)
        return top(hidden, mask)

    def forward(self, req: ForwardRequest) -> Outputs:
        with self.lock:
            self._check_open()
            if self._pending is not None and req.step == self._pending.step:
                return self._pending.reply
            if req.step != self.completed_step + 1:
                raise OutOfOrder(
                    f"forward for step {req.step} is out of order: the session's last completed step is "
                    f"{self.completed_step}, so the next forward is step {self.completed_step + 1}"
                )
            hidden, mask = check_representations(req.hidden, req.attention_mask, self.d_model, self.max_tokens)
            hidden.requires_grad_(self.config.train_bottom)
            self.tuned.module.train(self.config.dropout)
            with _RNG_LOCK, step_rng(self.config.seed, "vendor", req.step):
                outputs = self._run_top(hidden, mask)
            reply = Outputs(step=req.step, outputs=outputs.detach())
            self._pending = _Pending(req.step, hidden, outputs, reply)
            return reply

    def backward(self, req: BackwardRequest) -> BackwardResult:
        with self.lock:
            self._check_open()
            if self._last_backward is not None and req.step == self.completed_step:
                return self._last_backward
            pending = self._pending
            if pending is None or pending.step != req.step:
                raise OutOfOrder(f"backward for step {req.step} without its forward")
            grad = req.grad_outputs
            if not isinstance(grad, torch.Tensor) or grad.dtype not in WIRE_DTYPES.values():
                raise ProtocolError(f"grad_outputs must be a float tensor, got {getattr(grad, 'dtype', type(grad))}")
            if tuple(grad.shape) != tuple(pending.outputs.shape):
                raise ProtocolError(
                    f"grad_outputs shape {list(grad.shape)} does not match the outputs of step {req.step} "
                    f"{list(pending.outputs.shape)}"
                )
            if not bool(torch.isfinite(grad).all()):
                raise ProtocolError("grad_outputs contains NaN or Inf")
            self.optimizer.zero_grad(set_to_none=True)
            pending.outputs.backward(grad.float())
            self.optimizer.step()
            self.scheduler.step()
            grad_hidden = pending.hidden.grad.detach() if self.config.train_bottom else None
            self._last_backward = BackwardResult(step=req.step, grad_hidden=grad_hidden)
            self.completed_step = req.step
            self._pending = None
            return self._last_backward

    def predict(self, req: PredictRequest) -> Outputs:
        hidden, mask = check_representations(req.hidden, req.attention_mask, self.d_model, self.max_tokens)
        with self.lock, torch.no_grad():
            self._check_open()
            self.tuned.module.eval()
            outputs = self._run_top(hidden, mask)
        return Outputs(step=self.completed_step, outputs=outputs)

    def status(self) -> dict:
        return {
            "session_id": self.session_id,
            "completed_step": self.completed_step,
            "pending_step": self._pending.step if self._pending else None,
            "lr": self.scheduler.get_last_lr()[0],
            "trainable_parameters": self.tuned.num_trainable(),
            "checkpointed_step": self.checkpointed_step,
            "config": self.config.to_dict(),
        }

    # -- persistence (call with self.lock held) -------------------------------------------------------------------

    def _param_names(self) -> list[str]:
        ids = {id(p): n for n, p in self.tuned.module.named_parameters()}
        return [ids[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def write_state(self, directory: Path, model: str | None) -> None:
        """Write this session's state into the empty directory ``directory`` (see the module docstring)."""
        from safetensors.torch import save_file

        self.tuned.save(directory / TOP_DIR)
        tensors, optimizer_json = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, str(directory / OPTIMIZER_FILE))
        if self._last_backward is not None:
            (directory / LAST_BACKWARD_FILE).write_bytes(self._last_backward.to_bytes())
        meta = {
            "format": CHECKPOINT_FORMAT,
            "session_id": self.session_id,
            "token_sha256": self.token_sha256,
            "model": model,
            "config": self.config.to_dict(),
            "completed_step": self.completed_step,
            "parameters": self._param_names(),
            "optimizer": optimizer_json,
            "scheduler": self.scheduler.state_dict(),
        }
        (directory / SESSION_FILE).write_text(json.dumps(meta, indent=1))

    def read_state(self, directory: Path, meta: dict) -> None:
        """Load optimizer, scheduler, step and last backward answer written by :meth:`write_state`."""
        from safetensors.torch import load_file

        if meta["parameters"] != self._param_names():
            raise ValueError(f"{directory}: the checkpoint's trainable weights do not match the session's")
        self.optimizer.load_state_dict(_unflatten_optimizer(load_file(str(directory / OPTIMIZER_FILE)), meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        self.completed_step = int(meta["completed_step"])
        last = directory / LAST_BACKWARD_FILE
        self._last_backward = decode(last.read_bytes(), expect=BackwardResult) if last.is_file() else None
        if self._last_backward is not None and self._last_backward.step != self.completed_step:
            raise ValueError(f"{last} answers step {self._last_backward.step}, not {self.completed_step}")


class Vendor:
    """The vendor's side of splitpriv: one frozen base model (per label count) shared by all sessions.

    Every call names its session and carries the session's bearer token (compared in constant time).
    """

    def __init__(self, model: str | None = None, *, max_sessions: int = 256, state_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = 50, max_num_labels: int = 1000):
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                             or checkpoint_every < 0):
            raise ValueError(f"checkpoint_every must be an integer >= 0 or None, got {checkpoint_every!r}")
        self.model_name = model
        self.max_sessions = max_sessions
        self.max_num_labels = max_num_labels
        self.checkpoint_every = checkpoint_every or None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._bases: dict[int, tuple[torch.nn.Module, object]] = {}
        self._projections: dict[str, object] = {}
        self._sessions: dict[str, VendorSession] = {}
        self._lock = threading.RLock()
        self.load_errors: dict[str, str] = {}
        if self.state_dir is not None:
            (self.state_dir / SESSIONS_DIR).mkdir(parents=True, exist_ok=True)
            self._load_sessions()

    def base(self, num_labels: int):
        """The frozen base model and tokenizer for ``num_labels`` (loaded once, then shared)."""
        with self._lock:
            if num_labels not in self._bases:
                model, tokenizer = load_model(self.model_name, num_labels=num_labels, seed=0)
                model.requires_grad_(False)
                self._bases[num_labels] = (model, tokenizer)
            return self._bases[num_labels]

    def open_session(self, config: SessionConfig) -> SessionInfo:
        config = config.validate()
        if config.model is not None and config.model != self.model_name:
            raise ValueError(f"this vendor serves model {self.model_name or 'all-MiniLM-L6-v2'!r}, not {config.model!r}")
        if config.num_labels > self.max_num_labels:
            raise ValueError(f"num_labels must be at most {self.max_num_labels} on this vendor, got {config.num_labels}")
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimit(f"the vendor is at its limit of {self.max_sessions} open sessions")
            parts, tuned = self._build(config)
            session_id, token = secrets.token_hex(8), secrets.token_urlsafe(32)
            session = VendorSession(session_id, token, config, parts, tuned, projection=self._projection(config, parts))
            self._sessions[session_id] = session
        return SessionInfo(
            session_id=session_id,
            token=token,
            d_model=session.d_model,
            n_layers=parts.n_layers,
            disclosure={k: v for k, v in self.disclosure(parts, config).items() if k != "shipped_names"},
        )

    def _projection(self, config: SessionConfig, parts: SplitModel):
        """The vendor's token projection for ``config.denoise``; its candidate tables depend only on the frozen
        embedding weights (and, for MAP, the declared mechanism), so one per such key serves every session."""
        if config.denoise == "none":
            return None
        from splitpriv.roles.denoise import TokenProjection

        key = json.dumps([config.num_labels, config.denoise, config.declared_noise], sort_keys=True)
        with self._lock:
            if key not in self._projections:
                self._projections[key] = TokenProjection(parts.bottom, self.base(config.num_labels)[1],
                                                         method=config.denoise, declared_noise=config.declared_noise)
            return self._projections[key]

    def _build(self, config: SessionConfig) -> tuple[SplitModel, TunedTop]:
        model, _ = self.base(config.num_labels)
        parts = split_model(model, config.n_bottom_layers)
        _check_tuning_size(config.tuning, parts.top.d_model)
        with _RNG_LOCK, step_rng(config.seed, "vendor-init"):
            tuned = apply_tuning(parts.top, config.tuning)
        return parts, tuned

    def disclosure(self, parts: SplitModel, config: SessionConfig) -> dict:
        report = parts.disclosure().to_dict()
        report["head_shipped"] = config.head == "customer"
        if config.head == "customer":
            head = {n: p for n, p in parts.top.named_parameters() if n.startswith(_head_prefixes(parts))}
            moved = sum(p.numel() for p in head.values())
            report.update(
                shipped_parameters=report["shipped_parameters"] + moved,
                kept_parameters=report["kept_parameters"] - moved,
                shipped_names=sorted([*report["shipped_names"], *head]),
            )
            report["shipped_share"] = report["shipped_parameters"] / report["total_parameters"]
        return report

    def session(self, session_id: str, token: str | None) -> VendorSession:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(f"unknown or closed session {session_id!r}")
        if not session.check_token(token):
            raise Forbidden(f"the token does not grant access to session {session_id!r}")
        return session

    def bottom_package(self, session_id: str, token: str | None) -> bytes:
        """The bottom's weights + config + tokenizer (and the head's initial weights when the customer holds it)."""
        import tempfile
        from pathlib import Path

        from safetensors.torch import save as st_save

        session = self.session(session_id, token)
        _, tokenizer = self.base(session.config.num_labels)
        with tempfile.TemporaryDirectory() as tmp:
            save_bottom(session.parts.bottom, tmp, tokenizer, extra={"head": session.config.head})
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        if session.config.head == "customer":
            prefixes = _head_prefixes(session.parts)
            head = {n: p.detach().contiguous() for n, p in session.parts.top.named_parameters() if n.startswith(prefixes)}
            files[HEAD_WEIGHTS] = st_save(head)
        return pack_files(files)

    def forward(self, req: ForwardRequest, token: str | None) -> Outputs:
        return self.session(req.session_id, token).forward(req)

    def backward(self, req: BackwardRequest, token: str | None) -> BackwardResult:
        session = self.session(req.session_id, token)
        try:
            result = session.backward(req)
        finally:
            return_freed_memory()
        every = self.checkpoint_every
        if self.state_dir is not None and every and session.completed_step % every == 0:
            try:
                self._checkpoint(session)
            except UnknownSession:
                raise
            except Exception:  # noqa: BLE001 - the step is done; a failed periodic save must not lose its answer
                log.exception("periodic checkpoint of session %s failed", session.session_id)
        return result

    def predict(self, req: PredictRequest, token: str | None) -> Outputs:
        return self.session(req.session_id, token).predict(req)

    def status(self, session_id: str, token: str | None) -> dict:
        return self.session(session_id, token).status()

    def export(self, session_id: str, token: str | None, directory=None) -> str:
        """Write the session's trained top (``peft`` format for LoRA) to ``directory`` on the vendor's machine; with
        no ``directory``, checkpoint the session into the state dir and return its top's directory there."""
        session = self.session(session_id, token)
        if directory is None:
            return str(self._checkpoint(session) / TOP_DIR)
        with session.lock:
            return str(session.tuned.save(directory))

    def close(self, session_id: str, token: str | None) -> None:
        """End the session: it is forgotten, and its saved state (if any) deleted."""
        session = self.session(session_id, token)
        with self._lock:
            self._sessions.pop(session_id, None)
        with session.lock:
            session.closed = True
            if self.state_dir is not None:
                shutil.rmtree(self._session_dir(session_id), ignore_errors=True)

    # -- persistence ----------------------------------------------------------------------------------------------

    def checkpoint(self, session_id: str, token: str | None) -> dict:
        """Write the session's state to the state dir now; returns the checkpoint's directory (``path``), its tuned
        top's directory (``top``) and the step it holds (``completed_step``), all on the vendor's machine."""
        session = self.session(session_id, token)
        path = self._checkpoint(session)
        return {"session_id": session_id, "path": str(path), "top": str(path / TOP_DIR),
                "completed_step": int(path.name.split("-")[1])}

    def checkpoint_all(self) -> int:
        """Checkpoint every open session (on shutdown); returns how many were written. Errors are logged."""
        if self.state_dir is None:
            return 0
        with self._lock:
            sessions = list(self._sessions.values())
        written = 0
        for session in sessions:
            try:
                self._checkpoint(session)
                written += 1
            except Exception:  # noqa: BLE001 - one broken session must not stop the others being saved
                log.exception("could not checkpoint session %s", session.session_id)
        return written

    def _session_dir(self, session_id: str) -> Path:
        return self.state_dir / SESSIONS_DIR / session_id

    def _checkpoint(self, session: VendorSession) -> Path:
        if self.state_dir is None:
            raise ProtocolError("this vendor runs without a state directory, so it cannot checkpoint sessions "
                                "(start it with a state dir, e.g. `splitpriv serve --state-dir DIR`)")
        with session.lock:
            session._check_open()
            if session.checkpointed_step == session.completed_step and session.checkpoint_path is not None:
                return session.checkpoint_path
            root = self._session_dir(session.session_id)
            root.mkdir(parents=True, exist_ok=True)
            name = f"ckpt-{session.completed_step:08d}-{secrets.token_hex(4)}"
            tmp = root / f".tmp-{name}"
            tmp.mkdir()
            try:
                session.write_state(tmp, self.model_name)
                _fsync_tree(tmp)
                final = root / name
                os.replace(tmp, final)
                pointer = root / f".tmp-{CURRENT}-{secrets.token_hex(4)}"
                pointer.write_text(name)
                _fsync_file(pointer)
                os.replace(pointer, root / CURRENT)
                _fsync_dir(root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _remove_all_but(root, (name, CURRENT))
            session.checkpointed_step = session.completed_step
            session.checkpoint_path = final
            return final

    def _load_sessions(self) -> None:
        for root in sorted((self.state_dir / SESSIONS_DIR).iterdir()):
            if not root.is_dir() or root.name.startswith("."):
                continue
            try:
                session = self._load_session(root)
            except Exception as exc:  # noqa: BLE001 - a broken checkpoint must not keep the others from loading
                log.error("could not restore session from %s: %s", root, exc)
                self.load_errors[root.name] = f"{type(exc).__name__}: {exc}"
                continue
            if session is not None:
                self._sessions[session.session_id] = session
                log.info("restored session %s at step %d", session.session_id, session.completed_step)

    def _load_session(self, root: Path) -> VendorSession | None:
        pointer = root / CURRENT
        if not pointer.is_file():  # the first checkpoint never committed
            return None
        directory = root / pointer.read_text().strip()
        meta = json.loads((directory / SESSION_FILE).read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, this vendor reads {CHECKPOINT_FORMAT}")
        if meta["session_id"] != root.name:
            raise ValueError(f"{directory} belongs to session {meta['session_id']!r}")
        if meta.get("model") != self.model_name:
            raise ValueError(f"session was trained on model {meta.get('model')!r}, this vendor serves {self.model_name!r}")
        config = SessionConfig.from_dict(dict(meta["config"]))
        with self._lock:
            parts, tuned = self._build(config)
        tuned.load(directory / TOP_DIR)
        session = VendorSession(meta["session_id"], None, config, parts, tuned, token_sha256=meta["token_sha256"],
                                projection=self._projection(config, parts))
        session.read_state(directory, meta)
        session.checkpointed_step, session.checkpoint_path = session.completed_step, directory
        _remove_all_but(root, (directory.name, CURRENT))
        return session

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)


def _head_prefixes(parts: SplitModel) -> tuple[str, ...]:
    return tuple(f"{h}." for h in parts.family.head)


def _check_tuning_size(tuning, d_model: int) -> None:
    """Refuse tuning parameters that would only cost memory: a LoRA rank or adapter bottleneck above d."""
    from splitpriv.tuning import tuning_config

    config = tuning_config(tuning)
    for name in ("r", "bottleneck"):
        value = getattr(config, name, None)
        if value is not None and value > d_model:
            raise ValueError(f"{config.method} {name}={value} is above the model width d={d_model}")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` as safetensors tensors (``state.<index>.<name>``) + JSON for everything else."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups, tuples = [], []
    for group in state["param_groups"]:
        groups.append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items()})
        tuples.append(sorted(k for k, v in group.items() if isinstance(v, tuple)))
    return tensors, {"state": scalars, "param_groups": groups, "tuple_keys": tuples}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in data["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k in keys else v for k, v in group.items()}
              for group, keys in zip(data["param_groups"], data["tuple_keys"])]
    return {"state": state, "param_groups": groups}


def _remove_all_but(root: Path, keep: tuple[str, ...]) -> None:
    for path in root.iterdir():
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            _fsync_file(path)
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)
