"""Issue 17, findings 1 and 4: API keys (made with the CLI, stored hashed), per-key quotas answered with 429 naming
the quota, nothing tenant-specific for anonymous callers, /metrics, TLS with a throwaway CA (trustme) and a CLI
customer that closes its session. Real uvicorn servers on loopback, the real MiniLM."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest
import torch
from typer.testing import CliRunner

from splitpriv.cli import app as cli
from splitpriv.contract.errors import SessionLimit
from splitpriv.contract import BackwardRequest, ForwardRequest, SessionConfig
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.service.accounts import KEYS_FILE, KeyStore
from splitpriv.transport.http_client import HttpTransport, VendorUnavailable

D = 384
CONFIG = SessionConfig(n_bottom_layers=2, total_steps=20)
runner = CliRunner()


def _keys(*args) -> str:
    result = runner.invoke(cli, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _create(state, name, *options) -> str:
    return _keys("create", "--state-dir", str(state), "--name", name, *options).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("keyed-vendor")


@pytest.fixture(scope="module")
def keyed(state, loopback):
    vendor = Vendor(state_dir=state)
    server = loopback(create_app(vendor)).start()
    yield vendor, server.url
    server.stop()


def _forward(transport, info, step=1, shape=(2, 5)):
    return transport.forward(ForwardRequest(info.session_id, step, torch.randn(*shape, D),
                                            torch.ones(shape, dtype=torch.long)))


def test_keys_are_made_listed_and_revoked_by_the_cli_and_stored_hashed(state):
    key = _create(state, "alice", "--max-sessions", "3")
    assert key.startswith("spk_") and len(key) > 40
    path = state / KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text  # only the sha256
    record = KeyStore(state).check(key)
    assert record.name == "alice" and record.quotas.max_sessions == 3
    listed = _keys("list", "--state-dir", str(state), "--json")
    assert key not in listed and json.loads(listed)[0]["name"] == "alice"
    assert "alice" in _keys("list", "--state-dir", str(state)) and "max_sessions=3" in _keys("list", "--state-dir",
                                                                                             str(state))
    _create(state, "mallory")
    assert "revoked API key 'mallory'" in _keys("revoke", "mallory", "--state-dir", str(state))
    assert KeyStore(state).check(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    bad = runner.invoke(cli, ["keys", "create", "--state-dir", str(state), "--name", "alice"])
    assert bad.exit_code == 2 and "exists already" in bad.output


def test_opening_a_session_needs_a_key_once_the_vendor_has_keys(keyed, state, http):
    vendor, url = keyed
    key = _create(state, "bob")
    health = httpx.get(f"{url}/v1/health").json()
    assert health["keys_required"] and "sessions" not in health  # anonymous callers learn no tenant count
    body = json.dumps(CONFIG.to_dict()).encode()
    missing = http.raw(url, "/v1/sessions", body)
    http.expect(missing, 401, "API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    http.expect(http.raw(url, "/v1/sessions", body, "spk_00000000_" + "x" * 43), 403, "unknown or revoked")
    with pytest.raises(PermissionError):
        HttpTransport(url, retries=0).open_session(CONFIG)
    transport = HttpTransport(url, retries=0, api_key=key)
    info = transport.open_session(CONFIG)
    _forward(transport, info)
    transport.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2)))
    saved = http.raw(url, f"/v1/sessions/{info.session_id}/checkpoint", token=info.token).json()
    assert not any(str(state) in str(v) for v in saved.values()) and saved["top"].startswith("sessions/")
    assert (state / saved["top"]).is_dir()
    transport.close()


def test_each_quota_is_a_429_naming_it(keyed, state, http):
    vendor, url = keyed
    one = HttpTransport(url, retries=0, api_key=_create(state, "q-sessions", "--max-sessions", "1"))
    one.open_session(CONFIG)
    with pytest.raises(SessionLimit, match="max_sessions"):
        HttpTransport(url, retries=0, api_key=one.api_key).open_session(CONFIG)
    one.close()

    key = _create(state, "q-pending", "--max-sessions", "2", "--max-pending", "1")
    a, b = HttpTransport(url, retries=0, api_key=key), HttpTransport(url, retries=0, api_key=key)
    ia, ib = a.open_session(CONFIG), b.open_session(CONFIG)
    _forward(a, ia)
    _forward(a, ia)  # the same step again is a retry, not a second pending forward
    with pytest.raises(SessionLimit, match="max_pending"):
        _forward(b, ib)
    a.backward(BackwardRequest(ia.session_id, 1, torch.randn(2, 2)))
    _forward(b, ib)  # a's backward freed the slot
    a.close()
    b.close()

    tokens = HttpTransport(url, retries=0, api_key=_create(state, "q-tokens", "--max-tokens-per-request", "8"))
    info = tokens.open_session(CONFIG)
    with pytest.raises(SessionLimit, match="max_tokens_per_request.*2 x 5 = 10"):
        _forward(tokens, info)
    tokens.close()

    daily = HttpTransport(url, retries=0, api_key=_create(state, "q-bytes", "--max-bytes-per-day", "40000"))
    info = daily.open_session(CONFIG)
    _forward(daily, info)  # ~15 KB
    daily.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2)))
    _forward(daily, info, 2)
    with pytest.raises(SessionLimit, match="max_bytes_per_day"):
        daily.backward(BackwardRequest(info.session_id, 2, torch.randn(2, 2)))
        _forward(daily, info, 3)
    response = http.raw(url, f"/v1/sessions/{info.session_id}/forward", b"x" * 30000, info.token)
    http.expect(response, 429, "max_bytes_per_day")


def test_a_revoked_keys_sessions_are_refused(keyed, state):
    vendor, url = keyed
    transport = HttpTransport(url, retries=0, api_key=_create(state, "carol"))
    transport.open_session(CONFIG)
    _keys("revoke", "carol", "--state-dir", str(state))
    with pytest.raises(PermissionError, match="revoked"):
        transport.status()
    with pytest.raises(PermissionError):
        HttpTransport(url, retries=0, api_key=transport.api_key).open_session(CONFIG)


def test_metrics_in_prometheus_format(keyed, state, http, loopback):
    vendor, url = keyed
    transport = HttpTransport(url, retries=0, api_key=_create(state, "frank"))
    info = transport.open_session(CONFIG)
    _forward(transport, info)
    http.expect(http.raw(url, "/metrics", method="GET"), 401)
    http.expect(http.raw(url, "/metrics", method="GET", token=_create(state, "dave")), 403, "admin")
    text = http.raw(url, "/metrics", method="GET", token=_create(state, "ops", "--admin")).text
    for name in ("splitpriv_requests_total", "splitpriv_request_seconds_bucket", "splitpriv_sessions ",
                 "splitpriv_pending_forwards ", "process_resident_memory_bytes"):
        assert name in text, name
    assert 'route="/v1/sessions/{session_id}/forward"' in text and 'route="/metrics"' in text
    assert 'status="401"' in text and info.session_id not in text
    transport.close()
    open_vendor = loopback(create_app(Vendor())).start()  # no key store: local use, metrics for anyone
    try:
        assert "splitpriv_sessions 0.0" in httpx.get(f"{open_vendor.url}/metrics").text
    finally:
        open_vendor.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a `splitpriv serve` process of its own (imports torch, loads MiniLM): ~20-40 s
def test_serve_over_tls_from_the_cli_with_a_throwaway_ca_and_checkpoint_on_sigterm(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "serve", "--port", str(port), "--ssl-certfile",
                             str(cert_file), "--ssl-keyfile", str(key_file), "--state-dir", str(tmp_path / "state"),
                             "--checkpoint-every", "0", "--log-format", "json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        transport = HttpTransport(url, ca_file=str(ca_file), retries=60, backoff=0.25, max_backoff=0.5, deadline=60)
        assert transport.health()["status"] == "ok"
        start = time.monotonic()
        with pytest.raises(VendorUnavailable, match="--ca-file"):  # a certificate it cannot verify: no retries
            HttpTransport(url).health()
        assert time.monotonic() - start < 5
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5)  # no plain HTTP on the TLS port
        info = transport.open_session(CONFIG)
        _forward(transport, info)
        transport.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2)))
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says what ended it
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output[-2000:]
    current = tmp_path / "state" / "sessions" / info.session_id / "CURRENT"  # --checkpoint-every 0: SIGTERM saved it
    assert current.read_text().startswith("ckpt-00000001-")
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]  # --log-format json
    assert any(r["logger"] == "uvicorn.access" and r.get("path") == "/v1/health" and r.get("status") == 200
               for r in records), output[-2000:]
    assert any(r["logger"] == "splitpriv.service" and "checkpointed 1" in r["message"] for r in records)


def test_train_closes_its_session_unless_kept(keyed, state, tmp_path):
    vendor, url = keyed
    key = _create(state, "erin")
    common = ["train", "--vendor", url, "--dataset", "sst2-sample", "--train-limit", "8", "--eval-limit", "8",
              "--batch-size", "8", "--no-progress", "--json"]
    before = vendor.open_sessions
    done = runner.invoke(cli, [*common, "--out", str(tmp_path / "a")], env={"SPLITPRIV_API_KEY": key})
    assert done.exit_code == 0, done.output
    assert vendor.open_sessions == before
    saved = tmp_path / "a" / "customer" / "session.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and json.loads(saved.read_text())["token"]

    kept = runner.invoke(cli, [*common, "--api-key", key, "--keep-session", "--out", str(tmp_path / "b")])
    assert kept.exit_code == 0, kept.output
    assert vendor.open_sessions == before + 1
    texts = tmp_path / "texts.txt"
    texts.write_text("a warm, funny film\na dull mess\n")
    predicted = runner.invoke(cli, ["predict", "--run", str(tmp_path / "b"), "--input", str(texts), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert len([line for line in predicted.stdout.splitlines() if line.startswith("{")]) == 2
    closed = runner.invoke(cli, ["close", "--run", str(tmp_path / "b")])
    assert closed.exit_code == 0 and "closed session" in closed.stdout, closed.output
    assert vendor.open_sessions == before
