"""The vendor's API keys and their quotas: who may open sessions, and how much each key may use.

Keys live in ``STATE_DIR/keys.json`` (mode 0600), written by ``splitpriv keys create|revoke`` and read by the service
(which re-reads the file when it changes, so a key created or revoked while the service runs counts at once). A key
looks like ``spk_<id>_<secret>``: the id (public, 8 hex digits) names its record, the secret (32 random bytes) is
never stored: the record holds the sha256 of the whole key, compared in constant time (``hmac.compare_digest``).
sha256 suffices because the secret is random, not a password (no dictionary to slow down).

**When keys are required**: as soon as ``keys.json`` exists under the state dir, every ``POST /v1/sessions`` needs
``Authorization: Bearer <key>`` (missing → 401, unknown or revoked → 403), even when every key is revoked. A vendor
with no key store is open to anyone who can reach it: meant for local use (``splitpriv serve`` binds loopback).

**Quotas** (per key, 0 or null: no limit), each answered 429 with a message naming it: ``max_sessions`` open
sessions, ``max_pending`` forwards awaiting their backward, ``max_tokens_per_request`` (batch × tokens of one
forward / predict / decode), ``max_bytes_per_day`` of request bodies received (UTC day; counted in memory, so a
restart starts the day's count again).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

KEYS_FILE = "keys.json"
KEY_FORMAT = 1
_KEY = re.compile(r"^spk_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Quotas:
    """What one API key may use at once (``max_bytes_per_day``: per UTC day). None: no limit."""

    max_sessions: int | None = 4
    max_pending: int | None = 2
    max_tokens_per_request: int | None = 128 * 256
    max_bytes_per_day: int | None = 32 * 2**30

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{f.name} must be an integer >= 0 (0: no limit), got {value!r}")
            if value == 0:
                object.__setattr__(self, f.name, None)


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never its secret)."""

    key_id: str
    name: str
    sha256: str
    created: str
    quotas: Quotas
    revoked: str | None = None
    admin: bool = False  # may also read /metrics

    def to_dict(self) -> dict:
        return {**asdict(self), "quotas": asdict(self.quotas)}

    @classmethod
    def from_dict(cls, data: dict) -> "ApiKey":
        return cls(**{**data, "quotas": Quotas(**data.get("quotas", {}))})


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


class KeyStore:
    """``STATE_DIR/keys.json``: create, list, revoke and check API keys."""

    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / KEYS_FILE
        self._lock = threading.Lock()
        self._stamp = None
        self._keys: dict[str, ApiKey] = {}

    @property
    def active(self) -> bool:
        """Whether the store exists: then opening a session needs a key."""
        return self.path.is_file()

    def keys(self) -> dict[str, ApiKey]:
        """Every key by id, re-read when the file changed."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._keys = None, {}
                return {}
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp != self._stamp:
                data = json.loads(self.path.read_text())
                if data.get("format") != KEY_FORMAT:
                    raise ValueError(f"{self.path}: key store format {data.get('format')!r}, expected {KEY_FORMAT}")
                self._keys = {k: ApiKey.from_dict(v) for k, v in data["keys"].items()}
                self._stamp = stamp
            return dict(self._keys)

    def create(self, name: str, quotas: Quotas | None = None, *, admin: bool = False) -> tuple[str, ApiKey]:
        """A new key for ``name``: returns the key (shown once) and its record (``admin``: may read /metrics)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"key name {name!r}: 1-64 letters, digits or ._@- (starting with a letter or digit)")
        keys = self.keys()
        if any(k.name == name and k.revoked is None for k in keys.values()):
            raise ValueError(f"an active key named {name!r} exists already (revoke it first, or pick another name)")
        key_id = secrets.token_hex(4)
        while key_id in keys:
            key_id = secrets.token_hex(4)
        key = f"spk_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, hash_key(key), _now(), quotas or Quotas(), admin=bool(admin))
        self._write({**keys, key_id: record})
        return key, record

    def revoke(self, name_or_id: str) -> list[ApiKey]:
        """Revoke the active key(s) with that name or id; returns them (``LookupError`` when none matches)."""
        keys = self.keys()
        hits = [k for k in keys.values() if k.revoked is None and name_or_id in (k.name, k.key_id)]
        if not hits:
            raise LookupError(f"no active API key named or with id {name_or_id!r} in {self.path}")
        stamp = _now()
        for k in hits:
            keys[k.key_id] = ApiKey(**{**k.__dict__, "revoked": stamp})
        self._write(keys)
        return [keys[k.key_id] for k in hits]

    def check(self, presented: str) -> ApiKey | None:
        """The active key record ``presented`` belongs to, or None (unknown, malformed or revoked)."""
        match = _KEY.match(presented or "")
        record = self.keys().get(match.group(1)) if match else None
        expected = record.sha256 if record is not None else "0" * 64
        ok = hmac.compare_digest(expected, hash_key(presented or ""))
        return record if ok and record is not None and record.revoked is None else None

    def get(self, key_id: str | None) -> ApiKey | None:
        return self.keys().get(key_id) if key_id is not None else None

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{KEYS_FILE}.{secrets.token_hex(4)}")
        data = {"format": KEY_FORMAT, "keys": {k: v.to_dict() for k, v in sorted(keys.items())}}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class DailyBytes:
    """Request bytes received per key and UTC day (in memory)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._used: dict[str, tuple[str, int]] = {}

    def used(self, key_id: str) -> int:
        day, used = self._used.get(key_id, ("", 0))
        return used if day == _today() else 0

    def add(self, key_id: str, n: int) -> int:
        with self._lock:
            total = self.used(key_id) + n
            self._used[key_id] = (_today(), total)
            return total


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


__all__ = ["KEYS_FILE", "ApiKey", "DailyBytes", "KeyStore", "Quotas", "hash_key"]
