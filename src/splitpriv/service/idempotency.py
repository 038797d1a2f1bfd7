"""Idempotent opens and closes: ``POST /v1/sessions`` with an ``Idempotency-Key`` header opens at most one session
per key, however often it is retried, and ``DELETE /v1/sessions/{id}`` repeated with the session's token answers
as the first did.

Why: a customer whose open timed out cannot know whether the vendor opened the session. Without a key, a retry could
leave an orphan session behind (holding memory and a ``max_sessions`` quota slot), so opens were not retried and the
first call of a new customer was the one that gave up first on a busy vendor. With a key the HTTP transport retries
an open like any other call: a repeat gets the stored answer (same status, same body, the same session), counted
once against the quotas.

Where: ``DIR/idempotency/<owner>/<key>.json`` in the vendor's state dir, next to the sessions, written atomically
(temporary file, then ``os.replace``) and read and changed under the owner's ``filelock``. Replicas
(``splitpriv serve --ray``) share that dir, and they must: an open carries no session id, so the router may send its
retry to another replica than the first attempt. Without a state dir the store is in memory (one process).
``<owner>`` and ``<key>`` are SHA-256 digests (of the API key's id, and of owner + key): a name on disk never holds a
caller's string.

A record is ``pending`` while its open runs (a repeat waits for it, then gets its answer; after ``pending_timeout``
s, e.g. when its replica died, the key may open again) and ``done`` once answered; an open that failed forgets its
key, so that a retry tries again. The stored answer's session token is sealed with a pad derived from the
Idempotency-Key (SHAKE-256): the state dir alone does not give a session's token, only a caller with the key does.

Threat model: every caller may be hostile. Keys are 16-128 characters of ``[A-Za-z0-9_-]`` (else 400); a key is
scoped to its owner (the API key that sent it; callers without API keys share one scope), so nobody can read or
block another owner's keys. Memory and disk are bounded per owner: at most ``max_per_owner`` records, each kept
``ttl`` s (expired ones are dropped first, then the oldest finished one; an owner with ``max_per_owner`` opens in
flight gets 429). The number of owners is the number of API keys the operator created, plus one. Close records
share one scope of at most ``max_closed`` records (only a session's token holder can make one, one per session).
A repeat's wait for a pending open is bounded (:data:`WAIT`, then 503 + ``Retry-After``) and spent asleep, not in
a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

from filelock import FileLock

from splitpriv.service.guard import ServiceError

HEADER = "Idempotency-Key"
KEYS_DIR = "idempotency"
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
WAIT = 20.0  # seconds a repeat waits for the pending open of its key before 503
PENDING, DONE = "pending", "done"
CLOSED_SCOPE = "closed-sessions"


def check_key(key: str | None) -> str | None:
    """The header's key, or 400 naming what is wrong with it."""
    if key is None:
        return None
    if not KEY_PATTERN.fullmatch(key):
        shown = key[:40] + ("..." if len(key) > 40 else "")
        raise ServiceError(400, f"{HEADER} must be 16 to 128 characters of A-Z, a-z, 0-9, '_' and '-' (a random id "
                                f"per logical open, e.g. a UUID), got {len(key)} characters: {shown!r}")
    return key


def fingerprint(data: dict) -> str:
    """What makes two open requests the same: their JSON, canonically."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _digest(*parts: str | None) -> str:
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:40]


def _pad(key: str, n: int) -> bytes:
    return hashlib.shake_256(b"splitpriv-idempotency\0" + key.encode()).digest(n)


def seal(body: dict, key: str) -> dict:
    token = body["token"].encode()
    return {**body, "token": bytes(a ^ b for a, b in zip(token, _pad(key, len(token)))).hex()}


def unseal(body: dict, key: str) -> dict:
    sealed = bytes.fromhex(body["token"])
    return {**body, "token": bytes(a ^ b for a, b in zip(sealed, _pad(key, len(sealed)))).decode()}


class _Files:
    """Records as files under ``root/<scope>/``; a scope's lock is ``root/<scope>/.lock``."""

    def __init__(self, root: Path):
        self.root = root

    @contextlib.contextmanager
    def locked(self, scope: str):
        folder = self.root / scope
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / ".lock", timeout=30):
            yield

    def names(self, scope: str) -> list[str]:
        return [p.stem for p in (self.root / scope).glob("*.json")]

    def get(self, scope: str, name: str) -> dict | None:
        try:
            return json.loads((self.root / scope / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, scope: str, name: str, record: dict) -> None:
        path = self.root / scope / f"{name}.json"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def delete(self, scope: str, name: str) -> None:
        (self.root / scope / f"{name}.json").unlink(missing_ok=True)


class _Memory:
    """The same records in this process's memory (a vendor without a state dir)."""

    def __init__(self):
        self.scopes: dict[str, dict[str, dict]] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self, scope: str):
        with self.lock:
            yield

    def names(self, scope):
        return list(self.scopes.get(scope, {}))

    def get(self, scope, name):
        return self.scopes.get(scope, {}).get(name)

    def put(self, scope, name, record):
        self.scopes.setdefault(scope, {})[name] = dict(record)

    def delete(self, scope, name):
        self.scopes.get(scope, {}).pop(name, None)


class IdempotencyKeys:
    """Key -> answer of the opens (and closes) of every owner; see the module docstring for the bounds."""

    def __init__(self, state_dir: str | os.PathLike | None = None, *, ttl: float = 3600.0, max_per_owner: int = 256,
                 max_closed: int = 4096, pending_timeout: float = 300.0, clock=time.time):
        for name, value in (("ttl", ttl), ("pending_timeout", pending_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.records = _Files(Path(state_dir) / KEYS_DIR) if state_dir is not None else _Memory()
        self.ttl, self.max_per_owner, self.max_closed = ttl, max_per_owner, max_closed
        self.pending_timeout, self.clock = pending_timeout, clock

    # -- opens ----------------------------------------------------------------------------------------------------

    def begin(self, owner: str | None, key: str, request: str) -> dict | None:
        """None when this call now runs the open for ``key`` (then :meth:`finish` or :meth:`abandon`); the stored
        answer ``{"status", "body"}`` when the key has one; ``{"status": None}`` while another attempt runs it.
        409 when ``key`` was used with another request."""
        scope, name = _digest("owner", owner), _digest(owner, key)
        now = self.clock()
        with self.records.locked(scope):
            record = self.records.get(scope, name)
            if record is not None and self._expired(record, now):
                self.records.delete(scope, name)
                record = None
            if record is not None:
                if record["request"] != request:
                    raise ServiceError(409, f"this {HEADER} was already used to open a session with a different "
                                            "request body: use a new key for a new session")
                if record["state"] == PENDING:
                    return {"status": None}
                return {"status": record["status"], "body": unseal(record["body"], key)}
            self._make_room(scope, now)
            self.records.put(scope, name, {"state": PENDING, "request": request, "at": now})
        return None

    def finish(self, owner: str | None, key: str, status: int, body: dict) -> None:
        scope, name = _digest("owner", owner), _digest(owner, key)
        with self.records.locked(scope):
            record = self.records.get(scope, name) or {}
            self.records.put(scope, name, {**record, "state": DONE, "status": status, "body": seal(body, key),
                                           "at": self.clock()})

    def abandon(self, owner: str | None, key: str) -> None:
        """The open failed: forget the key, so that a retry opens again."""
        scope, name = _digest("owner", owner), _digest(owner, key)
        with self.records.locked(scope):
            self.records.delete(scope, name)

    def _expired(self, record: dict, now: float) -> bool:
        return now - record["at"] > (self.pending_timeout if record["state"] == PENDING else self.ttl)

    def _make_room(self, scope: str, now: float) -> None:
        """Under the scope's lock: drop expired records, then the oldest finished ones, until one more fits."""
        names = self.records.names(scope)
        if len(names) < self.max_per_owner:
            return
        records = {n: r for n in names if (r := self.records.get(scope, n)) is not None}
        for n in [n for n, r in records.items() if self._expired(r, now)]:
            self.records.delete(scope, n)
            del records[n]
        done = sorted((r["at"], n) for n, r in records.items() if r["state"] == DONE)
        for _, n in done[: max(len(records) - self.max_per_owner + 1, 0)]:
            self.records.delete(scope, n)
            del records[n]
        if len(records) >= self.max_per_owner:
            raise ServiceError(429, f"{len(records)} session opens with an {HEADER} are in flight for this caller, "
                                    f"the limit is {self.max_per_owner}: wait for them to finish")

    # -- closes ---------------------------------------------------------------------------------------------------

    def closed(self, session_id: str, token: str | None) -> bool:
        """Whether ``session_id`` was closed (within ``ttl`` s) by a caller holding ``token``."""
        record = self.records.get(CLOSED_SCOPE, _digest("closed", session_id))
        return (record is not None and token is not None and self.clock() - record["at"] <= self.ttl
                and record["token"] == _digest("token", session_id, token))

    def remember_close(self, session_id: str, token: str) -> None:
        with self.records.locked(CLOSED_SCOPE):
            names = self.records.names(CLOSED_SCOPE)
            if len(names) >= self.max_closed:
                dated = sorted((r["at"], n) for n in names if (r := self.records.get(CLOSED_SCOPE, n)) is not None)
                for _, n in dated[: len(names) - self.max_closed + 1]:
                    self.records.delete(CLOSED_SCOPE, n)
            self.records.put(CLOSED_SCOPE, _digest("closed", session_id),
                             {"token": _digest("token", session_id, token), "at": self.clock()})


__all__ = ["HEADER", "KEYS_DIR", "WAIT", "IdempotencyKeys", "check_key", "fingerprint"]
