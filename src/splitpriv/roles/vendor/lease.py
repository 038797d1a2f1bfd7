"""Ownership leases on a shared state dir, with fencing: at most one vendor replica serves a session at a time.

The lease of session ``s`` is ``DIR/leases/<s>.json`` = ``{"holder", "epoch", "expires"}``, read and changed only
under an exclusive lock of ``DIR/leases/<s>.lock`` (``filelock``: ``flock`` on POSIX). :meth:`Leases.acquire`
grants it when it is free, expired or already the caller's; a grant to a *new* holder increments ``epoch``, the
fencing token. A holder keeps serving ``s`` only while :meth:`Leases.renew` with its epoch succeeds, and commits a
checkpoint of ``s`` only inside :meth:`Leases.fenced` (under the lock, its epoch still current, the lease not yet
expired). So a replica that stalls past its lease (a long GC pause, a partition from the shared storage) and wakes
up cannot overwrite what its successor has written since: its epoch is stale and the write is refused.

Guarantee, given (a) a filesystem whose locks every replica honours (local disk, NFSv4, CephFS, EFS; not every FUSE
mount) and (b) clocks that agree to well within ``ttl``: no two replicas hold an unexpired lease on one session,
and every committed checkpoint was written by the holder of the current epoch. A dead replica's sessions become
claimable ``ttl`` seconds after its last renewal.

Why by hand: leases with fencing tokens over a shared directory are a few dozen lines on top of ``filelock``; the
maintained alternatives (etcd, ZooKeeper, Redis locks) need a server this deployment does not otherwise have.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path

from filelock import FileLock

from splitpriv.contract.errors import VendorBusy

LEASES_DIR = "leases"


class LeaseLost(VendorBusy):
    """This replica no longer holds the session's lease (another replica took it over): retry, and the request
    reaches the session's current holder."""


class Leases:
    """The leases of one holder (a vendor replica) under ``state_dir``; ``ttl`` seconds each, renewed on use."""

    def __init__(self, state_dir: str | os.PathLike, holder: str, ttl: float = 30.0, clock=time.time):
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        self.root = Path(state_dir) / LEASES_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.holder, self.ttl, self.clock = holder, float(ttl), clock

    def acquire(self, session_id: str) -> int | None:
        """The epoch of this holder's lease on ``session_id``, granting it when free or expired; None while another
        holder's lease is live."""
        with self._locked(session_id):
            lease = self._read(session_id)
            now = self.clock()
            if lease is not None and lease["holder"] != self.holder and lease["expires"] > now:
                return None
            same = lease is not None and lease["holder"] == self.holder
            epoch = lease["epoch"] if same else (lease["epoch"] + 1 if lease else 1)
            self._write(session_id, {"holder": self.holder, "epoch": epoch, "expires": now + self.ttl})
            return epoch

    def renew(self, session_id: str, epoch: int) -> bool:
        """Extend the lease held at ``epoch``; False when another holder has taken it since (even if this one's had
        expired, an untaken lease is simply extended)."""
        with self._locked(session_id):
            if not self._current(session_id, epoch):
                return False
            self._write(session_id, {"holder": self.holder, "epoch": epoch, "expires": self.clock() + self.ttl})
            return True

    @contextlib.contextmanager
    def fenced(self, session_id: str, epoch: int):
        """Run the body (a checkpoint's commit) only while the lease at ``epoch`` is this holder's and unexpired,
        with the lease's lock held throughout; :class:`LeaseLost` otherwise."""
        with self._locked(session_id):
            lease = self._read(session_id)
            if not self._current(session_id, epoch, lease) or lease["expires"] <= self.clock():
                raise LeaseLost(f"this replica's lease on session {session_id!r} (epoch {epoch}) has passed to "
                                f"{lease['holder'] if lease else 'nobody'}: retry")
            yield

    def release(self, session_id: str, epoch: int, *, forget: bool = False) -> None:
        """Give the lease up (it expires now; the epoch stays, so the next holder gets a higher one); ``forget``
        also removes it (the session is closed). The empty lock file stays: removing a lock file another process
        may be waiting on would let two processes hold "the" lock at once."""
        with self._locked(session_id):
            if self._current(session_id, epoch):
                if forget:
                    self._path(session_id).unlink(missing_ok=True)
                else:
                    self._write(session_id, {"holder": self.holder, "epoch": epoch, "expires": 0.0})

    def holder_of(self, session_id: str) -> dict | None:
        """The lease as stored (``holder``, ``epoch``, ``expires``), or None."""
        with self._locked(session_id):
            return self._read(session_id)

    def _current(self, session_id: str, epoch: int, lease: dict | None = None) -> bool:
        lease = self._read(session_id) if lease is None else lease
        return lease is not None and lease["holder"] == self.holder and lease["epoch"] == epoch

    def _path(self, session_id: str) -> Path:
        if not session_id or not all(c.isalnum() or c in "-_" for c in session_id):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.root / f"{session_id}.json"

    def _locked(self, session_id: str):
        return FileLock(str(self._path(session_id).with_suffix(".lock")), timeout=30)

    def _read(self, session_id: str) -> dict | None:
        try:
            return json.loads(self._path(session_id).read_text())
        except FileNotFoundError:
            return None

    def _write(self, session_id: str, lease: dict) -> None:
        path = self._path(session_id)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(lease))
        os.replace(tmp, path)


__all__ = ["LEASES_DIR", "LeaseLost", "Leases"]
