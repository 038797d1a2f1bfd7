"""The vendor: keeps the top of its model, tunes it for each customer, and never sees text, token ids or labels.

:class:`Vendor` is the multi-tenant facade: the sessions table, one frozen base model (a head per label count)
shared by every session, and the calls a transport makes (open, bottom package, forward, backward, predict, status, export,
close). One customer's state machine is :class:`~splitpriv.roles.vendor.session.VendorSession`, the on-disk format
:mod:`splitpriv.roles.vendor.checkpoint`, heap trimming :mod:`splitpriv.roles.vendor.memory`.

Threat model, from the vendor's side: the vendor is honest-but-curious. It follows the protocol, and everything it
receives (see :mod:`splitpriv.contract`) is exactly what ``splitpriv.attacks`` assumes an attacker has.

Persistence (``Vendor(model, state_dir=DIR)``): each session is written to ``DIR/sessions/<session_id>/`` when it
opens, on :meth:`Vendor.checkpoint`, after every ``checkpoint_every`` completed steps, and for every open session by
:meth:`Vendor.checkpoint_all` (the service calls it on shutdown). A new ``Vendor`` with the same ``state_dir`` loads
them again: the same token is accepted and training continues at ``completed_step + 1`` with the results an
uninterrupted run would give. What is not saved: a forward whose backward has not arrived (its autograd graph);
after a restart the customer repeats that step's forward. Closing a session deletes its directory: a closed session
can never be reached again, and the vendor keeps no customer-derived state it cannot use (copy an exported top
elsewhere first to keep it).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import torch

from splitpriv.contract.errors import Forbidden, ProtocolError, SessionLimit, UnknownSession
from splitpriv.contract.limits import check_int
from splitpriv.models import SEQUENCE_CLASSIFICATION, load_model
from splitpriv.contract import BackwardRequest, BackwardResult, DecodeRequest, ForwardRequest, Outputs, PredictRequest
from splitpriv.contract import SessionConfig, SessionInfo, pack_files
from splitpriv.roles.vendor.checkpoint import CHECKPOINT_FORMAT, SESSIONS_DIR, TOP_DIR, CheckpointStore, read_state
from splitpriv.roles.vendor.memory import return_freed_memory
from splitpriv.roles.vendor.session import (
    RNG_LOCK,
    RequestLimits,
    VendorSession,
    attention_units,
    check_representations,
    check_tuning_size,
    token_hash,
)
from splitpriv.roles.vendor.tenant_batch import TenantBatcher
from splitpriv.seeding import step_rng
from splitpriv.parts import HEAD_WEIGHTS, TAIL_WEIGHTS, SplitModel, check_split_fits, save_bottom, split_model
from splitpriv.parts.privatizer import load_privatizer, pretrained_privatizer
from splitpriv.tuning import TunedTop, apply_tuning

log = logging.getLogger(__name__)


class Vendor:
    """The vendor's side of splitpriv: one frozen base model (a head per label count) shared by all sessions.

    Every call names its session and carries the session's bearer token (compared in constant time). Predicts of
    LoRA sessions arriving together run as one batch of up to ``batch_predict`` rows
    (:mod:`~splitpriv.roles.vendor.tenant_batch`; 0 or None: one at a time); with ``batch_train``, so do the training
    forwards of such sessions that train without dropout (:mod:`~splitpriv.roles.vendor.training_batch`).
    """

    def __init__(self, model: str | None = None, *, max_sessions: int = 256, state_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = 50, max_num_labels: int = 1000, limits: RequestLimits | None = None,
                 idle_unload: float | None = None, session_ttl: float | None = None, batch_predict: int | None = 64,
                 batch_train: bool = False):
        for name, every in (("checkpoint_every", checkpoint_every), ("batch_predict", batch_predict)):
            if every is not None:
                check_int(name, every, 0, 2**31)
        self.model_name = model
        self.limits = limits or RequestLimits()  # per-request magnitude and cost caps, pending-forward TTL
        for name, value in (("idle_unload", idle_unload), ("session_ttl", session_ttl)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
        self.idle_unload, self.session_ttl = idle_unload, session_ttl  # seconds: see splitpriv.roles.vendor.idle
        self.max_sessions = max_sessions
        self.batcher = TenantBatcher(self.limits, batch_predict, train=batch_train) if batch_predict else None
        self.max_num_labels = max_num_labels
        self.checkpoint_every = checkpoint_every or None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.store = CheckpointStore(self.state_dir) if self.state_dir is not None else None
        self._bases: dict[tuple[str, int], tuple[torch.nn.Module, object]] = {}
        self._projections: dict[str, object] = {}
        self._sessions: dict[str, VendorSession] = {}
        self._lock = threading.RLock()
        self.load_errors: dict[str, str] = {}
        if self.store is not None:
            self._load_sessions()

    def base(self, num_labels: int, task: str = SEQUENCE_CLASSIFICATION):
        """The frozen base model and tokenizer for ``task`` (and ``num_labels``), loaded once, then shared. Another
        label count gets its own freshly initialised head (as ``load_model`` gives it) on the *same* pretrained
        tensors: a new ``num_labels`` costs a head, not another base model."""
        from splitpriv.tuning.base import share_equal_tensors

        key = (task, num_labels if task == SEQUENCE_CLASSIFICATION else 0)
        with self._lock:
            if key not in self._bases:
                model, tokenizer = load_model(self.model_name, num_labels=num_labels, seed=0, task=task)
                model.requires_grad_(False)
                first = next((m for (t, _), (m, _) in self._bases.items() if t == task), None)
                if first is not None:
                    share_equal_tensors(model, first)
                    return_freed_memory()
                self._bases[key] = (model, tokenizer)
            return self._bases[key]

    def open_session(self, config: SessionConfig, *, owner: str | None = None,
                     owner_max_sessions: int | None = None) -> SessionInfo:
        """Open a session for ``config``; ``owner`` (an API key's id) is recorded with it, and at most
        ``owner_max_sessions`` sessions of one owner are open at once (:class:`QuotaExceeded`, HTTP 429)."""
        from splitpriv.contract.errors import QuotaExceeded

        config = config.validate()
        if config.model is not None and config.model != self.model_name:
            raise ValueError(f"this vendor serves model {self.model_name or 'all-MiniLM-L6-v2'!r}, not {config.model!r}")
        if config.num_labels > self.max_num_labels:
            raise ValueError(f"num_labels must be at most {self.max_num_labels} on this vendor, got {config.num_labels}")
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimit(f"the vendor is at its limit of {self.max_sessions} open sessions")
            if owner_max_sessions is not None and self.owned(owner)[0] >= owner_max_sessions:
                raise QuotaExceeded(f"quota max_sessions: this API key already has {owner_max_sessions} open "
                                    "session(s); close one first (DELETE /v1/sessions/{id}, `splitpriv close`)")
            parts, tuned = self._build(config)
            session_id, token = secrets.token_hex(8), secrets.token_urlsafe(32)
            session = VendorSession(session_id, token, config, parts, tuned, projection=self._projection(config, parts),
                                    owner=owner, limits=self.limits)
            self._sessions[session_id] = session
        if self.store is not None:  # a session handed out survives a crash before its first periodic checkpoint
            try:
                self._checkpoint(session)
            except BaseException:
                with self._lock:
                    self._sessions.pop(session_id, None)
                self.store.delete(session_id)
                raise
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
        from splitpriv.roles.vendor.denoise import TokenProjection

        key = json.dumps([config.num_labels, config.denoise, config.declared_noise], sort_keys=True)
        with self._lock:
            if key not in self._projections:
                self._projections[key] = TokenProjection(parts.bottom, self.base(config.num_labels)[1],
                                                         method=config.denoise, declared_noise=config.declared_noise)
            return self._projections[key]

    def _build(self, config: SessionConfig) -> tuple[SplitModel, TunedTop]:
        model, _ = self.base(config.num_labels, config.model_task)
        j = config.n_tail_layers if config.causal else None
        check_split_fits(model.config, config.n_bottom_layers, j, task=config.model_task, privatizer=config.privatizer,
                         vendor_blocks=1 if config.causal else 0)  # before anything is fitted; a middle of >= 1 block
        parts = split_model(model, config.n_bottom_layers, j, privatizer=config.privatizer,
                            privatizer_seed=config.seed)
        if pretrained_privatizer(self.model_folder) is not None:  # its top reads that privatizer's output only
            load_privatizer(parts, self.model_folder)  # the pre-trained halves; refused for another split or none
        check_tuning_size(config.tuning, parts.top.d_model)
        with RNG_LOCK, step_rng(config.seed, "vendor-init"):
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
        """The open session ``session_id`` once ``token`` is its token (reloaded if it was unloaded while idle)."""
        from splitpriv.roles.vendor.idle import Unloaded, reload

        with self._lock:  # last_used is stamped under the lock: an idle sweep sees every lookup
            session = self._sessions.get(session_id)
            if session is None:
                raise UnknownSession(f"unknown or closed session {session_id!r}")
            if not session.check_token(token):
                raise Forbidden(f"the token does not grant access to session {session_id!r}")
            if isinstance(session, Unloaded):
                session = reload(self, session)
            session.last_used = time.monotonic()
        return session

    def sweep_idle(self) -> dict[str, int]:
        """Unload sessions idle for ``idle_unload`` s, close those idle for ``session_ttl`` s
        (:mod:`splitpriv.roles.vendor.idle`)."""
        from splitpriv.roles.vendor.idle import sweep_idle

        return sweep_idle(self)

    def owned(self, owner: str | None) -> tuple[int, int]:
        """How many open sessions ``owner`` has, and how many of them hold a pending forward."""
        with self._lock:
            mine = [s for s in self._sessions.values() if s.owner == owner]
        return len(mine), sum(s.pending_step is not None for s in mine)

    def expire_pending(self) -> int:
        """Free every pending forward older than ``limits.pending_ttl`` (its autograd graph); returns how many. A
        late backward for it gets 409 saying to resend the forward. Busy sessions are skipped (next sweep)."""
        if self.limits.pending_ttl is None:
            return 0
        with self._lock:
            sessions = list(self._sessions.values())
        now = time.monotonic()
        freed = sum(session.expire_pending(now) for session in sessions)
        if freed:
            return_freed_memory()
        return freed

    def pending_forwards(self) -> int:
        with self._lock:
            return sum(s.pending_step is not None for s in self._sessions.values())

    def bottom_package(self, session_id: str, token: str | None) -> bytes:
        """The bottom's weights + config + tokenizer (and the head's initial weights when the customer holds it)."""
        import tempfile
        from pathlib import Path

        from safetensors.torch import save as st_save

        session = self.session(session_id, token)
        _, tokenizer = self.base(session.config.num_labels, session.config.model_task)
        extra = {"head": session.config.head, "n_tail_layers": session.config.n_tail_layers}
        with tempfile.TemporaryDirectory() as tmp:
            save_bottom(session.parts.bottom, tmp, tokenizer, extra=extra)
            if session.parts.tail is not None:
                from splitpriv.parts import save_tail

                save_tail(session.parts.tail, Path(tmp) / TAIL_WEIGHTS)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        if session.config.head == "customer":
            prefixes = _head_prefixes(session.parts)
            head = {n: p.detach().contiguous() for n, p in session.parts.top.named_parameters() if n.startswith(prefixes)}
            files[HEAD_WEIGHTS] = st_save(head)
        return pack_files(files)

    def forward(self, req: ForwardRequest, token: str | None) -> Outputs:
        from splitpriv.contract.errors import VendorBusy

        self.expire_pending()
        session = self.session(req.session_id, token)
        shape = getattr(req.hidden, "shape", ())
        if session.pending_step != req.step and len(shape) == 3:  # a retry holds nothing new
            cost = attention_units(shape)
            with self._lock:
                held = sum(s.pending_cost for s in self._sessions.values())
            if held + cost > self.limits.max_pending_cost:
                raise VendorBusy(f"the vendor is holding {held} units (batch x tokens^2) of pending forwards, its "
                                 f"limit is {self.limits.max_pending_cost}: retry shortly")
        return self.batcher.forward(session, req) if self.batcher is not None else session.forward(req)

    def repeated_forward(self, session_id: str, token: str | None, step: int) -> Outputs | None:
        """The cached reply when ``step`` is the session's pending forward (a retry), else ``None``: a transport
        that knows the step before the body can answer a retry without reading it."""
        return self.session(session_id, token).repeated_forward(step)

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
        session = self.session(req.session_id, token)
        return self.batcher.predict(session, req) if self.batcher is not None else session.predict(req)

    def decode(self, req: DecodeRequest, token: str | None) -> Outputs:
        return self.session(req.session_id, token).decode(req)

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
            if self.store is not None:
                self.store.delete(session_id)

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

    def _checkpoint(self, session: VendorSession) -> Path:
        if self.store is None:
            raise ProtocolError("this vendor runs without a state directory, so it cannot checkpoint sessions "
                                "(start it with a state dir, e.g. `splitpriv serve --state-dir DIR`)")
        with session.lock:
            return self._save_locked(session)

    def _save_locked(self, session: VendorSession) -> Path:
        """:meth:`_checkpoint` for a caller that holds ``session.lock``."""
        session.check_open()
        if session.checkpointed_step == session.completed_step and session.checkpoint_path is not None:
            return session.checkpoint_path
        if not all(bool(torch.isfinite(p).all()) for p in session.tuned.parameters()):
            raise ProtocolError(f"session {session.session_id} holds non-finite weights: it is not checkpointed")
        final = self.store.save(session, self.model_name)
        session.checkpointed_step = session.completed_step
        session.checkpoint_path = final
        return final

    def _load_sessions(self) -> None:
        """Restore every committed session; with ``idle_unload`` as an unloaded stub (loaded on its first call)."""
        from splitpriv.roles.vendor.idle import stub_from_checkpoint

        for root in self.store.session_dirs():
            try:
                session = stub_from_checkpoint(self, root) if self.idle_unload else self._load_session(root)
            except Exception as exc:  # noqa: BLE001 - a broken checkpoint must not keep the others from loading
                log.error("could not restore session from %s: %s", root, exc)
                self.load_errors[root.name] = f"{type(exc).__name__}: {exc}"
                continue
            if session is not None:
                self._sessions[session.session_id] = session
                log.info("restored session %s at step %d", session.session_id, session.completed_step)

    def _load_session(self, root: Path) -> VendorSession | None:
        found = self.store.committed(root, self.model_name)
        if found is None:
            return None
        directory, meta = found
        config = SessionConfig.from_dict(dict(meta["config"]))
        with self._lock:
            parts, tuned = self._build(config)
        tuned.load(directory / TOP_DIR)
        session = VendorSession(meta["session_id"], None, config, parts, tuned, token_sha256=meta["token_sha256"],
                                projection=self._projection(config, parts), owner=meta.get("owner"),
                                limits=self.limits)
        read_state(session, directory, meta)
        session.checkpointed_step, session.checkpoint_path = session.completed_step, directory
        self.store.keep_only(directory)
        return session

    @property
    def model_folder(self) -> str:
        from splitpriv.models import resolve_model_name

        return resolve_model_name(self.model_name)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)


def _head_prefixes(parts: SplitModel) -> tuple[str, ...]:
    return tuple(f"{h}." for h in parts.family.head)


__all__ = ["CHECKPOINT_FORMAT", "SESSIONS_DIR", "TOP_DIR", "SessionLimit", "Vendor", "VendorSession",
           "check_representations", "return_freed_memory", "token_hash"]
