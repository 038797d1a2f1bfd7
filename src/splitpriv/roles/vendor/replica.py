"""One vendor replica among several that share a state dir (``splitpriv serve --ray``,
:mod:`splitpriv.service.ray_serve`).

:class:`ReplicaVendor` is a :class:`~splitpriv.roles.vendor.Vendor` that serves a session only while it holds the
session's lease (:mod:`splitpriv.roles.vendor.lease`) and commits its checkpoints only under that lease's fence:

- **open**: the session is written to the shared dir under a fresh lease, which is then released and the session
  dropped from memory. The router sends the session's later calls (keyed on its id) to one replica, which loads it
  on its first call; the opener need not be that replica.
- **every call**: a session held here is served after its lease is renewed (at most every ``ttl/3`` s, so a lease
  is never less than two thirds fresh when used); a session not held here is claimed and loaded from its last
  checkpoint. While another replica's lease is live the call gets :class:`~splitpriv.roles.vendor.lease.LeaseLost`
  (HTTP 503 + ``Retry-After``; the HTTP transport retries): after a replica dies, its sessions move to their new
  owners ``ttl`` s after its last renewal.
- **a lost lease** (this replica stalled past its TTL and another took the session): the stale copy is dropped
  unsaved; the successor's state is the session's.

What a replica's death loses is what it had not checkpointed (``checkpoint_every`` steps; a forward waiting for its
backward): the customer's journal replays from the vendor's ``completed_step`` (``splitpriv train --resume``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from splitpriv.contract.errors import UnknownSession
from splitpriv.roles.vendor.lease import LeaseLost, Leases
from splitpriv.roles.vendor import Vendor

log = logging.getLogger(__name__)


class ReplicaVendor(Vendor):
    """A vendor replica: ``state_dir`` is the replicas' shared storage, ``replica_id`` its name in the leases
    (default ``<host>:<pid>``), ``lease_ttl`` seconds a lease lasts without renewal."""

    def __init__(self, model: str | None = None, *, state_dir: str | os.PathLike, replica_id: str | None = None,
                 lease_ttl: float = 30.0, **options):
        if state_dir is None:
            raise ValueError("a vendor replica needs a state dir shared with the other replicas")
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.leases = Leases(state_dir, self.replica_id, lease_ttl)
        self._epochs: dict[str, int] = {}
        self._renewed: dict[str, float] = {}
        self._claiming = threading.Lock()
        super().__init__(model, state_dir=state_dir, **options)

    def _load_sessions(self) -> None:
        """Nothing at start: a replica loads a session when the router sends it one of its calls."""

    def open_session(self, config, **kwargs):
        info = super().open_session(config, **kwargs)
        self._let_go(info.session_id)
        return info

    def session(self, session_id: str, token: str | None):
        with self._lock:
            held = session_id in self._sessions
        if held and not self._keep(session_id):
            log.warning("session %s: lease passed to another replica; dropping the local copy", session_id)
            self._forget(session_id)
            held = False
        if not held:
            self._claim(session_id)
        return super().session(session_id, token)

    def close(self, session_id: str, token: str | None) -> None:
        super().close(session_id, token)
        epoch = self._unlease(session_id)
        if epoch is not None:
            self.leases.release(session_id, epoch, forget=True)

    def _save_locked(self, session):
        epoch = self._epochs.get(session.session_id)
        if epoch is None:  # a new session: nobody can hold its lease yet
            epoch = self.leases.acquire(session.session_id)
            if epoch is None:
                raise LeaseLost(f"session {session.session_id!r} is held by another replica")
            self._epochs[session.session_id] = epoch
        elif not self.leases.renew(session.session_id, epoch):  # an idle session's lease may have run out untaken
            self._forget(session.session_id)
            raise LeaseLost(f"session {session.session_id!r} has passed to another replica: not checkpointed here")
        self._renewed[session.session_id] = time.monotonic()
        try:
            with self.leases.fenced(session.session_id, epoch):
                return super()._save_locked(session)
        except LeaseLost:
            self._forget(session.session_id)
            raise

    def sweep_idle(self) -> dict[str, int]:
        """As :meth:`Vendor.sweep_idle`; the leases of sessions it closed are removed too."""
        done = super().sweep_idle()
        with self._lock:
            gone = [sid for sid in self._epochs if sid not in self._sessions]
        for sid in gone:
            epoch = self._unlease(sid)
            if epoch is not None and not self.store.session_dir(sid).is_dir():
                self.leases.release(sid, epoch, forget=True)
        return done

    def _keep(self, session_id: str) -> bool:
        """Renew this replica's lease when a third of its TTL has passed; False when it has been lost."""
        epoch = self._epochs.get(session_id)
        if epoch is None:
            return False
        if time.monotonic() - self._renewed.get(session_id, 0.0) < self.leases.ttl / 3:
            return True
        if not self.leases.renew(session_id, epoch):
            return False
        self._renewed[session_id] = time.monotonic()
        return True

    def _claim(self, session_id: str) -> None:
        from splitpriv.roles.vendor.idle import stub_from_checkpoint

        with self._claiming:
            with self._lock:
                if session_id in self._sessions:
                    return
            root = self.store.session_dir(session_id)
            if not root.is_dir():
                raise UnknownSession(f"unknown or closed session {session_id!r}")
            epoch = self.leases.acquire(session_id)
            if epoch is None:
                raise LeaseLost(f"session {session_id!r} is being served by another replica: retry shortly")
            try:
                stub = stub_from_checkpoint(self, root)
            except Exception:
                self.leases.release(session_id, epoch)
                raise
            if stub is None:
                self.leases.release(session_id, epoch)
                raise UnknownSession(f"unknown or closed session {session_id!r} (no committed checkpoint)")
            with self._lock:
                if len(self._sessions) >= self.max_sessions:
                    self.leases.release(session_id, epoch)
                    raise LeaseLost(f"this replica holds its limit of {self.max_sessions} sessions: retry shortly")
                self._sessions[session_id] = stub  # loaded in full by Vendor.session on this very call
                self._epochs[session_id] = epoch
                self._renewed[session_id] = time.monotonic()
            log.info("session %s claimed at epoch %d (step %d)", session_id, epoch, stub.completed_step)

    def _let_go(self, session_id: str) -> None:
        epoch = self._forget(session_id)
        if epoch is not None:
            self.leases.release(session_id, epoch)

    def _forget(self, session_id: str) -> int | None:
        """Drop the local copy and the lease bookkeeping of ``session_id``; returns the epoch it was held at."""
        with self._lock:
            self._sessions.pop(session_id, None)
        return self._unlease(session_id)

    def _unlease(self, session_id: str) -> int | None:
        self._renewed.pop(session_id, None)
        return self._epochs.pop(session_id, None)


__all__ = ["ReplicaVendor"]
