"""Idle sessions on the vendor: after ``idle_unload`` seconds without a call a session is checkpointed and dropped
from memory (its tuned top, optimizer moments and gradients), leaving an :class:`Unloaded` stub that still counts
as an open session; its next call reloads it from the checkpoint, so the customer sees no difference. After
``session_ttl`` seconds without a call the session is closed and its saved state deleted: an abandoned session
(a customer killed with ``kill -9``) does not hold a slot, or a key's quota, forever.

:func:`sweep_idle` does both; the service calls it from its background task. A session that is busy (its lock held)
or has a forward waiting for its backward is left alone until a later sweep.
"""

from __future__ import annotations

import gc
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from splitpriv.contract.errors import UnknownSession
from splitpriv.roles.vendor.memory import return_freed_memory

log = logging.getLogger(__name__)


@dataclass
class Unloaded:
    """What the vendor keeps of an unloaded session: enough to check its token, count it and find its checkpoint."""

    session_id: str
    token_sha256: str
    owner: str | None
    completed_step: int
    checkpoint_path: Path
    last_used: float
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending_step = None
    pending_cost = 0

    @property
    def checkpointed_step(self) -> int:
        return self.completed_step

    def check_token(self, token: str | None) -> bool:
        from splitpriv.roles.vendor.session import token_hash

        return bool(token) and hmac.compare_digest(self.token_sha256, token_hash(token))

    def check_open(self) -> None:
        if self.closed:
            raise UnknownSession(f"unknown or closed session {self.session_id!r}")

    def expire_pending(self, now: float | None = None) -> bool:
        return False

    def repeated_forward(self, step: int):
        return None  # nothing is pending in an unloaded session


def sweep_idle(vendor, now: float | None = None) -> dict[str, int]:
    """Unload the sessions idle for ``vendor.idle_unload`` s (needs a state dir) and close those idle for
    ``vendor.session_ttl`` s; returns how many of each."""
    now = time.monotonic() if now is None else now
    with vendor._lock:
        sessions = list(vendor._sessions.values())
    done = {"unloaded": 0, "deleted": 0}
    for session in sessions:
        idle = now - session.last_used
        if vendor.session_ttl is not None and idle > vendor.session_ttl:
            done["deleted"] += _delete(vendor, session)
        elif (vendor.idle_unload is not None and vendor.store is not None and idle > vendor.idle_unload
              and not isinstance(session, Unloaded)):
            done["unloaded"] += _unload(vendor, session)
    if done["unloaded"] or done["deleted"]:
        gc.collect()
        return_freed_memory()
        log.info("idle sessions: %d unloaded, %d closed after %s s", done["unloaded"], done["deleted"],
                 vendor.session_ttl)
    return done


def _unload(vendor, session) -> int:
    if not session.lock.acquire(blocking=False):
        return 0
    try:
        if session.pending_step is not None or session.closed:
            return 0
        stamp = session.last_used
        try:
            path = vendor._save_locked(session)
        except Exception:  # noqa: BLE001 - a session that cannot be saved stays loaded
            log.exception("could not checkpoint idle session %s; it stays in memory", session.session_id)
            return 0
        stub = Unloaded(session.session_id, session.token_sha256, session.owner, session.completed_step, path, stamp)
        with vendor._lock:
            if vendor._sessions.get(session.session_id) is not session or session.last_used != stamp:
                return 0  # used meanwhile
            vendor._sessions[session.session_id] = stub
        return 1
    finally:
        session.lock.release()


def _delete(vendor, session) -> int:
    if not session.lock.acquire(blocking=False):
        return 0
    try:
        stamp = session.last_used
        with vendor._lock:
            if vendor._sessions.get(session.session_id) is not session or session.last_used != stamp:
                return 0
            vendor._sessions.pop(session.session_id)
        session.closed = True
        if vendor.store is not None:
            vendor.store.delete(session.session_id)
        return 1
    finally:
        session.lock.release()


def stub_from_checkpoint(vendor, root: Path) -> Unloaded | None:
    """An unloaded session for the committed checkpoint in ``root`` (None when none committed): a restarted vendor
    restores its sessions without loading any of them."""
    found = vendor.store.committed(root, vendor.model_name)
    if found is None:
        return None
    directory, meta = found
    return Unloaded(meta["session_id"], meta["token_sha256"], meta.get("owner"), int(meta["completed_step"]),
                    directory, time.monotonic())


def reload(vendor, stub: Unloaded):
    """The live session for ``stub``, from its checkpoint (the caller holds the vendor's lock)."""
    session = vendor._load_session(vendor.store.session_dir(stub.session_id))
    if session is None:
        vendor._sessions.pop(stub.session_id, None)
        raise UnknownSession(f"unknown or closed session {stub.session_id!r} (its saved state is gone)")
    vendor._sessions[stub.session_id] = session
    return session


__all__ = ["Unloaded", "reload", "stub_from_checkpoint", "sweep_idle"]
