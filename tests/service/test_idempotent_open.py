"""Issue 31: a customer survives a vendor that answers its first open too slowly. The open carries an
``Idempotency-Key``; the HTTP transport retries it like any other call, and the vendor answers the repeat with the
session the first attempt opened: one session, counted once against the quota. A repeated key gets the same
session, the key with another body 409, a malformed key 400 (never 500), and a repeated close the first answer.
Real uvicorn servers on loopback, the real MiniLM."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from splitpriv.contract import SessionConfig
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.service.accounts import KeyStore, Quotas
from splitpriv.service.deps import open_hook
from splitpriv.service.idempotency import IdempotencyKeys
from splitpriv.transport.http_client import HttpTransport

CONFIG = SessionConfig(n_bottom_layers=2, total_steps=20)
OPEN = "/v1/sessions"


@pytest.fixture(scope="module")
def slow(tmp_path_factory, loopback):
    """A vendor with a state dir and one API key allowed one open session, whose open answers after ``delay["s"]``
    seconds (0: at once), via the app's test hook."""
    state = tmp_path_factory.mktemp("idempotent-vendor")
    secret, record = KeyStore(state).create("acme", Quotas(max_sessions=1))
    vendor = Vendor(state_dir=state)
    app = create_app(vendor)
    delay = {"s": 0.0, "calls": 0, "key": secret, "key_id": record.key_id, "app": app}

    async def hook():
        delay["calls"] += 1
        await asyncio.sleep(delay["s"])

    app.dependency_overrides[open_hook] = lambda: hook
    server = loopback(app).start()
    yield vendor, server.url, delay
    server.stop()


def _body(config=CONFIG) -> bytes:
    import json

    return json.dumps(config.to_dict()).encode()


def test_a_slow_first_open_is_retried_and_yields_exactly_one_session(slow):
    vendor, url, delay = slow
    before = vendor.open_sessions
    delay.update(s=2.5, calls=0)  # longer than the client's timeout: the first answer is lost
    daily = delay["app"].state.guard.daily
    used = daily.used(delay["key_id"])
    transport = HttpTransport(url, timeout=1.0, backoff=0.2, max_backoff=0.5, deadline=30.0, api_key=delay["key"])
    try:
        start = time.monotonic()
        transport.open_session(CONFIG)  # the key may hold one session: a second open would be a 429
        assert transport.attempts >= 2, "the first attempt should have timed out"
        assert time.monotonic() - start < 20
        assert delay["calls"] == 1, "the repeat must not open (or wait on) a second session"
        assert vendor.open_sessions == before + 1
        assert vendor.owned(delay["key_id"])[0] == 1  # counted once against max_sessions
        body = httpx.Request("POST", url, json=CONFIG.to_dict()).content
        assert daily.used(delay["key_id"]) - used == len(body)  # and once against the bytes per day
        assert transport.status()["completed_step"] == 0  # the answered token is the session's token
        delay["s"] = 0.0
        transport.close()
        assert vendor.open_sessions == before
    finally:
        delay["s"] = 0.0
        transport.disconnect()


def test_a_repeated_key_gets_the_same_session_and_another_body_is_refused(slow, http):
    vendor, url, delay = slow
    key = "repeat-key-0123456789"
    first = http.raw(url, OPEN, _body(), token=delay["key"],
                     headers={"Idempotency-Key": key, "Content-Type": "application/json"})
    assert first.status_code == 201, first.text
    again = http.raw(url, OPEN, _body(), token=delay["key"],
                     headers={"Idempotency-Key": key, "Content-Type": "application/json"})
    assert again.status_code == 201 and again.json() == first.json()
    other = SessionConfig(n_bottom_layers=3, total_steps=20)
    refused = http.raw(url, OPEN, _body(other), token=delay["key"],
                     headers={"Idempotency-Key": key, "Content-Type": "application/json"})
    http.expect(refused, 409, "Idempotency-Key", "different request body")
    session = first.json()
    assert vendor.session(session["session_id"], session["token"]) is not None
    # close is idempotent: a repeat with the token answers as the first did; a wrong token learns nothing
    path = f"{OPEN}/{session['session_id']}"
    closed = http.raw(url, path, token=session["token"], method="DELETE")
    assert closed.status_code == 200 and closed.json() == {"session_id": session["session_id"], "closed": True}
    repeat = http.raw(url, path, token=session["token"], method="DELETE")
    assert repeat.status_code == 200 and repeat.json() == closed.json()
    http.expect(http.raw(url, path, token="not-the-token", method="DELETE"), 404, "unknown")
    # after the close, the key still names the same (now closed) session: no new session is opened
    count = vendor.open_sessions
    late = http.raw(url, OPEN, _body(), token=delay["key"],
                     headers={"Idempotency-Key": key, "Content-Type": "application/json"})
    assert late.json()["session_id"] == session["session_id"] and vendor.open_sessions == count


MALFORMED = ["short", "x" * 129, "has space in it 0123", "semi;colon;0123456789", "ünïcode-0123456789", ""]


@pytest.mark.parametrize("key", MALFORMED)
def test_a_malformed_key_is_a_400_not_a_500(slow, http, key):
    _, url, delay = slow
    headers = {"Idempotency-Key": key.encode("utf-8"), "Content-Type": "application/json"}
    response = http.raw(url, OPEN, _body(), token=delay["key"], headers=headers)
    http.expect(response, 400, "Idempotency-Key")


def test_the_store_is_bounded_per_owner_shared_through_the_dir_and_seals_tokens(tmp_path):
    now = [1000.0]
    keys = IdempotencyKeys(tmp_path, ttl=60, max_per_owner=3, clock=lambda: now[0])
    other = IdempotencyKeys(tmp_path, ttl=60, max_per_owner=3, clock=lambda: now[0])  # another replica
    for i in range(5):
        key = f"key-{i:02d}-0123456789abcdef"
        assert keys.begin("alice", key, "req") is None
        keys.finish("alice", key, 201, {"session_id": f"s{i}", "token": f"secret-token-{i}"})
        now[0] += 1
    scope = next((tmp_path / "idempotency").iterdir())
    assert len(list(scope.glob("*.json"))) == 3  # the oldest were evicted
    assert "secret-token" not in "".join(p.read_text() for p in scope.glob("*.json"))
    assert other.begin("alice", "key-04-0123456789abcdef", "req")["body"]["token"] == "secret-token-4"
    assert other.begin("bob", "key-04-0123456789abcdef", "req") is None  # keys are per owner
    assert keys.begin("alice", "key-00-0123456789abcdef", "req") is None  # evicted: opens anew
    now[0] += 120  # past the TTL
    assert keys.begin("alice", "key-04-0123456789abcdef", "req") is None
