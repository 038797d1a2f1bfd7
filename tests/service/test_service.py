"""The vendor service and the HTTP customer transport, over a real uvicorn server on a loopback port (no mocks).

The server runs in a background thread of the test process, so the tests can also look at the Vendor object
behind it (its sessions' optimizer state, its base model) and at every request body it received.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save as st_save

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract.errors import Forbidden, OutOfOrder, PayloadTooLarge, ProtocolError, UnknownSession
from splitpriv.contract import (
    BackwardRequest,
    BackwardResult,
    ForwardRequest,
    Outputs,
    PredictRequest,
    SessionConfig,
    SessionInfo,
    decode,
)
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.transport import InProcessTransport
from splitpriv.transport.http_client import HttpTransport, VendorError, VendorUnavailable

uvicorn = pytest.importorskip("uvicorn")

D = 384  # all-MiniLM-L6-v2
SMALL_CAP = 64 * 1024
SESSION = SessionConfig(n_bottom_layers=2, total_steps=20, seed=0)
PRIVACY = PrivacyConfig(mechanism="dchi", eta=10.0)
TRAIN = TrainConfig(batch_size=32, max_length=64, seed=0, noise_seed=1234, eval_batch_size=64)


# -- a real server in a thread -------------------------------------------------------------------------------------


class Recorder:
    """ASGI middleware keeping every request (method, path, headers, body) exactly as the server received it."""

    def __init__(self, app):
        self.app = app
        self.requests: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record = {"method": scope["method"], "path": scope["path"], "body": bytearray(),
                  "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]}}
        self.requests.append(record)

        async def tapped():
            message = await receive()
            if message["type"] == "http.request":
                record["body"] += message.get("body", b"")
            return message

        await self.app(scope, tapped, send)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    return Vendor(state_dir=tmp_path_factory.mktemp("vendor-state"))


@pytest.fixture(scope="module")
def recorder(vendor):
    return Recorder(create_app(vendor))


@pytest.fixture(scope="module")
def url(recorder, loopback):
    server = loopback(recorder).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def small_url(vendor, loopback):
    """The same vendor behind a second app whose body cap is 64 KiB."""
    server = loopback(create_app(vendor, max_body_bytes=SMALL_CAP)).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def sst2(data_dir):
    from splitpriv.data import load_dataset

    return load_dataset("sst2", "train", limit=96, seed=0), load_dataset("sst2", "dev", limit=64, seed=0)


def _base_hash(vendor: Vendor) -> str:
    model, _ = vendor.base(2)
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


# -- the same run in process and over HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(vendor, recorder, url, sst2, trainable):
    """A short private LoRA run (k=2, d_chi η=10, fixed seeds) in process and over HTTP, and what the server saw."""
    train, dev = sst2
    out = {}
    for name, transport in (("inprocess", InProcessTransport(vendor)), ("http", HttpTransport(url))):
        start = len(recorder.requests)
        customer = Customer.open(transport, SESSION, PRIVACY, TRAIN)
        fit = customer.fit(train.texts, train.labels, progress=False)
        evaluation = customer.evaluate(dev.texts, dev.labels, progress=False)
        logits = customer.predict_logits(dev.texts[:16])
        out[name] = {"losses": fit["losses"], "eval": evaluation, "logits": logits, "transport": transport,
                     "trained": trainable(vendor, transport.session),
                     "requests": recorder.requests[start:]}
    return out


def test_health_docs_and_unknown_routes(url):
    health = httpx.get(f"{url}/v1/health").json()
    assert health["status"] == "ok" and health["max_body_bytes"] == 64 * 2**20 and health["persistent"]
    assert "swagger" in httpx.get(f"{url}/docs").text.lower()
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    for path in ("/v1/sessions", "/v1/sessions/{session_id}/bottom", "/v1/sessions/{session_id}/forward",
                 "/v1/sessions/{session_id}/backward", "/v1/sessions/{session_id}/predict",
                 "/v1/sessions/{session_id}/checkpoint", "/v1/sessions/{session_id}/status",
                 "/v1/sessions/{session_id}", "/v1/health"):
        assert path in paths
    missing = httpx.get(f"{url}/v2/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.put(f"{url}/v1/health")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_http_training_matches_in_process(runs):
    local, remote = runs["inprocess"], runs["http"]
    assert len(remote["losses"]) == 3
    assert remote["losses"] == pytest.approx(local["losses"], abs=1e-5)
    assert remote["eval"]["accuracy"] == local["eval"]["accuracy"]
    torch.testing.assert_close(remote["logits"], local["logits"], atol=1e-5, rtol=0)
    for name, tensor in local["trained"].items():
        torch.testing.assert_close(remote["trained"][name], tensor, atol=1e-6, rtol=0)
    assert remote["transport"].bytes_sent == local["transport"].bytes_sent
    assert remote["transport"].bytes_received == local["transport"].bytes_received


def _wire_contents(body: bytes) -> tuple[str, dict, dict]:
    """What a message body holds, read straight from the safetensors header: kind, scalar fields, tensors."""
    from safetensors.torch import load

    header = json.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])
    meta = header.pop("__metadata__")
    assert set(meta) == {"kind", "fields"}
    return meta["kind"], json.loads(meta["fields"]), load(body)


def test_customer_held_head_over_http_matches_in_process_and_keeps_predictions_home(vendor, recorder, url, sst2):
    """--head customer over HTTP: the same losses and predictions as in process, and every message the vendor
    answers with carries hidden states [B, T, d], never class scores."""
    from dataclasses import replace

    train, dev = sst2
    session = replace(SESSION, head="customer", train_bottom=True)
    out = {}
    for name, transport in (("inprocess", InProcessTransport(vendor)), ("http", HttpTransport(url))):
        start = len(recorder.requests)
        customer = Customer.open(transport, session, PRIVACY, replace(TRAIN, bottom="trained"))
        assert customer.head is not None and transport.session.disclosure["head_shipped"]
        fit = customer.fit(train.texts, train.labels, progress=False)
        logits = customer.predict_logits(dev.texts[:16])
        out[name] = {"losses": fit["losses"], "logits": logits, "requests": recorder.requests[start:]}
    assert out["http"]["losses"] == pytest.approx(out["inprocess"]["losses"], abs=1e-5)
    torch.testing.assert_close(out["http"]["logits"], out["inprocess"]["logits"], atol=1e-5, rtol=0)
    assert out["http"]["logits"].shape == (16, 2)
    kinds = [_wire_contents(bytes(r["body"]))[0] for r in out["http"]["requests"]
             if r["method"] == "POST" and r["path"].endswith(("/forward", "/backward", "/predict"))]
    assert {"forward", "backward", "predict"} <= set(kinds)
    for r in out["http"]["requests"]:
        if r["path"].endswith("/backward"):
            _, _, tensors = _wire_contents(bytes(r["body"]))
            assert tensors["grad_outputs"].shape[-1] == D, "the vendor gets gradients w.r.t. hidden states"


def test_wire_carries_only_representations_masks_and_gradients(runs, sst2):
    """Decode every request body the server received during the HTTP run: float [B, T, d] representations,
    0/1 masks, float gradients, step numbers and a session config, and never text, token ids or labels."""
    requests = runs["http"]["requests"]
    sid = runs["http"]["transport"].session.session_id
    texts = [t.encode() for t in sst2[0].texts + sst2[1].texts if len(t) >= 12]
    kinds = []
    standard = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-type", "content-length",
                "authorization", "x-splitpriv-step",  # a forward's step, which its body carries too
                "x-session-id",  # the session id of the path, for a router in front of replicas
                "idempotency-key"}  # an open's random id, kept across its retries
    for req in requests:
        assert set(req["headers"]) <= standard, req["headers"]
        assert len(req["headers"].get("idempotency-key", "x" * 32)) == 32  # token_urlsafe(24): random, nothing else
        assert req["headers"].get("x-session-id", sid) == sid
        body = bytes(req["body"])
        assert not any(text in body for text in texts)
        if req["path"] == "/v1/sessions":
            assert set(json.loads(body)) <= set(SessionConfig.__dataclass_fields__)
            continue
        assert req["path"].startswith(f"/v1/sessions/{sid}")
        if req["method"] in ("GET", "DELETE") or req["path"].endswith("/checkpoint"):
            assert body == b""
            continue
        kind, scalars, tensors = _wire_contents(body)
        msg = decode(body)
        kinds.append(kind)
        assert msg.session_id == sid
        if kind in ("forward", "predict"):
            assert set(scalars) == ({"session_id", "step"} if kind == "forward" else {"session_id"})
            assert set(tensors) == {"hidden", "attention_mask"}
            assert msg.hidden.dtype == torch.float32 and msg.hidden.dim() == 3 and msg.hidden.shape[-1] == D
            assert not msg.attention_mask.dtype.is_floating_point
            assert set(msg.attention_mask.unique().tolist()) <= {0, 1}
            assert tuple(msg.attention_mask.shape) == tuple(msg.hidden.shape[:2])
            assert bool((msg.hidden[msg.attention_mask == 0] == 0).all())  # padding is zeroed
        else:
            assert kind == "backward"
            assert set(scalars) == {"session_id", "step"} and set(tensors) == {"grad_outputs"}
            assert msg.grad_outputs.dtype == torch.float32 and msg.grad_outputs.shape[-1] == SESSION.num_labels
    assert kinds.count("forward") == kinds.count("backward") == 3
    assert kinds.count("predict") == 2  # 64 dev sentences at batch 64, then 16


def test_repeated_forward_and_backward_are_answered_once(vendor, url, trainable):
    """A retry (the same step sent twice) gets the stored answer and steps the optimizer once."""
    config = SessionConfig(n_bottom_layers=2, total_steps=10)
    g = torch.Generator().manual_seed(0)
    hidden, mask = torch.randn(4, 7, D, generator=g), torch.ones(4, 7, dtype=torch.long)
    mask[0, 5:] = 0
    hidden[0, 5:] = 0
    grad = torch.randn(4, 2, generator=g) / 4

    remote = HttpTransport(url)
    info = remote.open_session(config)
    before = trainable(vendor, info)
    first = remote.forward(ForwardRequest(info.session_id, 1, hidden, mask))
    again = remote.forward(ForwardRequest(info.session_id, 1, hidden, mask))
    assert torch.equal(first.outputs, again.outputs)
    assert remote.status()["pending_step"] == 1
    remote.backward(BackwardRequest(info.session_id, 1, grad))
    once = trainable(vendor, info)
    remote.backward(BackwardRequest(info.session_id, 1, grad))
    twice = trainable(vendor, info)
    assert any(not torch.equal(before[n], once[n]) for n in before)
    assert all(torch.equal(once[n], twice[n]) for n in once)
    session = vendor.session(info.session_id, info.token)
    assert {float(s["step"]) for s in session.optimizer.state.values()} == {1.0}
    assert remote.status()["completed_step"] == 1

    local = InProcessTransport(vendor)  # the same step, sent once
    ref = local.open_session(config)
    local.forward(ForwardRequest(ref.session_id, 1, hidden, mask))
    local.backward(BackwardRequest(ref.session_id, 1, grad))
    for name, tensor in trainable(vendor, ref).items():
        torch.testing.assert_close(twice[name], tensor, atol=1e-7, rtol=0)
    local.close()
    remote.close()


def test_unreachable_vendor_is_retried_then_reported():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # a bound port nobody listens on
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    transport = HttpTransport(f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    with pytest.raises(VendorUnavailable, match="after 3 attempt"):
        transport.health()


# -- tenants -------------------------------------------------------------------------------------------------------


def test_two_customers_train_concurrently_in_isolation(vendor, url, sst2, train_steps):
    """Two customers train at once over HTTP; each gets exactly its sequential in-process result, neither can
    reach the other's session, and the shared base model is bit-identical afterwards."""
    train, _ = sst2
    texts, labels = train.texts[:64], train.labels[:64]
    configs = {
        "a": (SessionConfig(n_bottom_layers=2, total_steps=10, seed=1, dropout=False), PRIVACY,
              TrainConfig(batch_size=32, noise_seed=1)),
        "b": (SessionConfig(n_bottom_layers=1, total_steps=10, seed=2, dropout=False, tuning={"method": "bitfit"}),
              PrivacyConfig(mechanism="gaussian", sigma=0.5), TrainConfig(batch_size=32, noise_seed=2)),
    }
    base = _base_hash(vendor)
    expected = {}
    for name, config in configs.items():
        customer = Customer.open(InProcessTransport(vendor), *config)
        expected[name] = train_steps(customer, texts, labels)
        customer.transport.close()

    customers = {name: Customer.open(HttpTransport(url), *config) for name, config in configs.items()}
    results, errors = {}, []

    def work(name):
        try:
            results[name] = train_steps(customers[name], texts, labels)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in customers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in configs:
        assert results[name] == pytest.approx(expected[name], abs=1e-6)

    a, b = customers["a"].transport.session, customers["b"].transport.session
    intruder = HttpTransport(url, session=SessionInfo(b.session_id, a.token, a.d_model, a.n_layers, {}))
    with pytest.raises(Forbidden, match=b.session_id):
        intruder.status()
    with pytest.raises(Forbidden):
        intruder.forward(ForwardRequest(b.session_id, 3, torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.long)))
    with pytest.raises(Forbidden):
        intruder.close()
    with pytest.raises(UnknownSession, match="0123456789abcdef"):
        HttpTransport(url, session=SessionInfo("0123456789abcdef", a.token, D, 6, {})).status()
    assert customers["b"].transport.status()["completed_step"] == 2
    assert _base_hash(vendor) == base
    for customer in customers.values():
        customer.transport.close()


def test_concurrent_sessions_keep_their_own_dropout(vendor, url):
    """With dropout on, each session's forward draws from its own seeded stream even when sessions run at the
    same time: the answers equal those of the same sessions run one after the other."""
    g = torch.Generator().manual_seed(3)
    steps = [(torch.randn(8, 12, D, generator=g), torch.randn(8, 2, generator=g) / 8) for _ in range(3)]
    mask = torch.ones(8, 12, dtype=torch.long)

    def run(transport, seed):
        info = transport.open_session(SessionConfig(n_bottom_layers=2, total_steps=10, seed=seed))
        outs = []
        for step, (hidden, grad) in enumerate(steps, start=1):
            outs.append(transport.forward(ForwardRequest(info.session_id, step, hidden, mask)).outputs)
            transport.backward(BackwardRequest(info.session_id, step, grad))
        transport.close()
        return outs

    expected = {seed: run(HttpTransport(url), seed) for seed in (5, 6)}
    results = {}
    threads = [threading.Thread(target=lambda s=seed: results.__setitem__(s, run(HttpTransport(url), s)))
               for seed in (5, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in (5, 6):
        for got, want in zip(results[seed], expected[seed], strict=True):
            assert torch.equal(got, want)


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(vendor, url):
    """A session with one completed step, that every bad request below is aimed at."""
    transport = HttpTransport(url)
    info = transport.open_session(SessionConfig(n_bottom_layers=2, total_steps=50))
    hidden, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)
    transport.forward(ForwardRequest(info.session_id, 1, hidden, mask))
    transport.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2)))
    return transport


def _state(transport):
    status = transport.status()
    return status["completed_step"], status["pending_step"]


def _forward_bytes(sid, step=2, hidden=None, mask=None):
    hidden = torch.randn(2, 5, D) if hidden is None else hidden
    mask = torch.ones(hidden.shape[0], hidden.shape[1], dtype=torch.long) if mask is None else mask
    return ForwardRequest(sid, step, hidden, mask).to_bytes()


def _crafted(kind, fields, tensors=None):
    tensors = tensors if tensors is not None else {"hidden": torch.randn(1, 3, D), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    return st_save(tensors, metadata={"kind": kind, "fields": fields if isinstance(fields, str) else json.dumps(fields)})


def _nan():
    h = torch.randn(2, 5, D)
    h[1, 2, 3] = float("nan")
    return h


def _inf():
    h = torch.randn(2, 5, D)
    h[0, 0, 0] = float("inf")
    return h


BAD_FORWARDS = {
    # name: (body builder from session id, route, status, words in the message)
    "not safetensors": (lambda sid: b"this is not a safetensors payload, just text", "forward", 400, "safetensors"),
    "empty body": (lambda sid: b"", "forward", 400, "empty"),
    "truncated": (lambda sid: _forward_bytes(sid)[:3000], "forward", 400, "truncated"),
    "int32 hidden": (lambda sid: _forward_bytes(sid, hidden=torch.randint(0, 30000, (2, 5, D), dtype=torch.int32)),
                     "forward", 400, "hidden must be a float tensor", "int32"),
    "float64 hidden": (lambda sid: _forward_bytes(sid, hidden=torch.randn(2, 5, D, dtype=torch.float64)),
                       "forward", 400, "hidden must be a float tensor", "float64"),
    "wrong width d": (lambda sid: _forward_bytes(sid, hidden=torch.randn(2, 5, 100)), "forward", 400, f"{D}]", "[2, 5, 100]"),
    "2-d hidden": (lambda sid: _forward_bytes(sid, hidden=torch.randn(5, D), mask=torch.ones(5, D, dtype=torch.long)),
                   "forward", 400, "shape"),
    "mask shape": (lambda sid: _forward_bytes(sid, mask=torch.ones(2, 4, dtype=torch.long)), "forward", 400,
                   "attention_mask shape [2, 4]"),
    "float mask": (lambda sid: _forward_bytes(sid, mask=torch.ones(2, 5)), "forward", 400, "attention_mask", "float"),
    "mask not 0/1": (lambda sid: _forward_bytes(sid, mask=torch.full((2, 5), 2)), "forward", 400, "only 0 and 1"),
    "empty sequence": (lambda sid: _forward_bytes(sid, mask=torch.tensor([[1] * 5, [0] * 5])), "forward", 400,
                       "all zeros"),
    "NaN": (lambda sid: _forward_bytes(sid, hidden=_nan()), "forward", 400, "NaN or Inf"),
    "Inf": (lambda sid: _forward_bytes(sid, hidden=_inf()), "forward", 400, "NaN or Inf"),
    "too many tokens": (lambda sid: _forward_bytes(sid, hidden=torch.randn(1, 600, D)), "forward", 400, "600 tokens"),
    "other session id": (lambda sid: _forward_bytes("feedfacecafebeef"), "forward", 400, "does not match", "feedface"),
    "step not an integer": (lambda sid: _crafted("forward", {"session_id": sid, "step": "2"}), "forward", 400,
                            "step must be an integer"),
    "fields not an object": (lambda sid: _crafted("forward", "5"), "forward", 400, "malformed"),
    "labels smuggled in": (lambda sid: _crafted("forward", {"session_id": sid, "step": 2, "labels": [1]}), "forward",
                           400, "unexpected fields", "labels"),
    "token ids smuggled in": (lambda sid: _crafted("forward", {"session_id": sid, "step": 2}, {
        "hidden": torch.randn(1, 3, D), "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "input_ids": torch.ones(1, 3, dtype=torch.long)}), "forward", 400, "unexpected fields", "input_ids"),
    "unknown kind": (lambda sid: _crafted("labels", {"session_id": sid}), "forward", 400, "unknown message kind"),
    "wrong kind for route": (lambda sid: BackwardRequest(sid, 2, torch.randn(2, 2)).to_bytes(), "forward", 400,
                             "expected a 'forward' message"),
    "out-of-order step": (lambda sid: _forward_bytes(sid, step=5), "forward", 409, "out of order", "step 2"),
    "backward without forward": (lambda sid: BackwardRequest(sid, 2, torch.randn(2, 2)).to_bytes(), "backward", 409,
                                 "without its forward"),
    "predict wrong width": (lambda sid: PredictRequest(sid, torch.randn(2, 5, 10), torch.ones(2, 5, dtype=torch.long)).to_bytes(),
                            "predict", 400, "shape"),
    "predict NaN": (lambda sid: PredictRequest(sid, _nan(), torch.ones(2, 5, dtype=torch.long)).to_bytes(), "predict",
                    400, "NaN"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARDS))
def test_bad_message_is_refused_and_changes_nothing(victim, url, case, http):
    build, route, status, *words = BAD_FORWARDS[case]
    info = victim.session
    before = _state(victim)
    assert before[1] is None
    response = http.raw(url, f"/v1/sessions/{info.session_id}/{route}", build(info.session_id), info.token)
    http.expect(response, status, *words)
    assert _state(victim) == before


BAD_BACKWARDS = {
    "grad shape": (lambda sid: BackwardRequest(sid, 2, torch.randn(3, 2)).to_bytes(), 400, "does not match", "[3, 2]"),
    "grad NaN": (lambda sid: BackwardRequest(sid, 2, torch.full((2, 2), float("nan"))).to_bytes(), 400, "NaN or Inf"),
    "grad int": (lambda sid: BackwardRequest(sid, 2, torch.ones(2, 2, dtype=torch.int64)).to_bytes(), 400,
                 "grad_outputs must be a float tensor"),
    "grad float64": (lambda sid: BackwardRequest(sid, 2, torch.ones(2, 2, dtype=torch.float64)).to_bytes(), 400,
                     "float"),
    "backward for a later step": (lambda sid: BackwardRequest(sid, 3, torch.randn(2, 2)).to_bytes(), 409,
                                  "without its forward"),
    "truncated backward": (lambda sid: BackwardRequest(sid, 2, torch.randn(2, 2)).to_bytes()[:-5], 400, "truncated"),
}


@pytest.mark.parametrize("case", list(BAD_BACKWARDS))
def test_bad_backward_is_refused_and_changes_nothing(victim, url, case, http):
    info = victim.session
    victim.forward(ForwardRequest(info.session_id, 2, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))
    before = _state(victim)
    assert before == (1, 2)
    build, status, *words = BAD_BACKWARDS[case]
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/backward", build(info.session_id), info.token), status, *words)
    assert _state(victim) == before


def test_tokens_and_sessions_are_checked(vendor, victim, url, http):
    info = victim.session
    path = f"/v1/sessions/{info.session_id}/forward"
    before = _state(victim)
    body = _forward_bytes(info.session_id, step=3)
    missing = http.raw(url, path, body)
    http.expect(missing, 401, "missing bearer token")
    assert missing.headers["www-authenticate"] == "Bearer"
    http.expect(http.raw(url, path, body, headers={"Authorization": f"Basic {info.token}"}), 401, "malformed")
    http.expect(http.raw(url, path, body, "not-the-token"), 403, "does not grant access", info.session_id)
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/status", method="GET", token="x" * 43), 403)
    http.expect(http.raw(url, "/v1/sessions/0000000000000000/forward", body, info.token), 404, "unknown", "0000000000000000")
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}", method="DELETE"), 401)
    assert _state(victim) == before

    closed = HttpTransport(url)
    gone = closed.open_session(SessionConfig(n_bottom_layers=2))
    closed.close()
    http.expect(http.raw(url, f"/v1/sessions/{gone.session_id}/forward", _forward_bytes(gone.session_id, 1), gone.token), 404,
            "closed session")
    closed.attach(gone)
    with pytest.raises(UnknownSession):
        closed.status()
    closed.attach(gone)
    closed.close()  # closing again with the token answers as the first close did (issue 31: idempotent close)
    http.expect(http.raw(url, "/v1/sessions/0000000000000000", method="DELETE", token=gone.token), 404, "unknown")


def test_payload_above_the_cap(vendor, victim, small_url, http):
    info = victim.session
    before = _state(victim)
    path = f"/v1/sessions/{info.session_id}/forward"
    big = _forward_bytes(info.session_id, hidden=torch.randn(4, 64, D))  # ~390 KB
    assert len(big) > SMALL_CAP
    http.expect(http.raw(small_url, path, big, info.token), 413, "above", str(SMALL_CAP))

    def chunks():  # no Content-Length: the streamed size is what is checked
        for start in range(0, len(big), 16384):
            yield big[start:start + 16384]

    # read only where the session would take a forward: not while the victim's own forward is pending
    fresh = HttpTransport(small_url).open_session(SessionConfig(n_bottom_layers=2, total_steps=50))
    streamed = http.raw(small_url, f"/v1/sessions/{fresh.session_id}/forward", chunks(), fresh.token)
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    http.expect(streamed, 413, "stopped reading")
    http.expect(http.raw(small_url, "/v1/sessions", json.dumps({"seed": 0, "model": "x" * SMALL_CAP}).encode()), 413)
    assert _state(victim) == before
    with pytest.raises(PayloadTooLarge):
        HttpTransport(small_url, session=info).forward(ForwardRequest(info.session_id, 2, torch.randn(4, 64, D),
                                                                      torch.ones(4, 64, dtype=torch.long)))
    assert _state(victim) == before


def test_upload_cut_short_is_not_a_server_error(victim, url, caplog):
    """A client that announces more body than it sends and hangs up: the request is dropped, not logged as a bug."""
    import logging

    info = victim.session
    before = _state(victim)
    port = int(url.rsplit(":", 1)[1])
    with caplog.at_level(logging.ERROR, logger="splitpriv"), socket.create_connection(("127.0.0.1", port)) as conn:
        head = (f"POST /v1/sessions/{info.session_id}/forward HTTP/1.1\r\nHost: test\r\n"
                f"Authorization: Bearer {info.token}\r\nContent-Length: 100000\r\n\r\n").encode()
        conn.sendall(head + _forward_bytes(info.session_id)[:1000])
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        while conn.recv(65536):
            pass
        time.sleep(0.2)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert _state(victim) == before


def test_a_bug_is_a_json_500_without_traceback(http, loopback):
    class Faulty(Vendor):  # a vendor with a bug in one call
        def status(self, session_id, token):
            raise RuntimeError("secret internal detail")

        def session(self, session_id, token):
            return None

    server = loopback(create_app(Faulty())).start()
    try:
        response = http.raw(server.url, "/v1/sessions/abc/status", method="GET", token="t")
        message = http.expect(response, 500, "internal error", "RuntimeError")
        assert "secret internal detail" not in message
        with pytest.raises(VendorError, match="500"):
            HttpTransport(server.url, session=SessionInfo("abc", "t", D, 6, {})).status()
    finally:
        server.stop()


BAD_CONFIGS = {
    "unknown tuning method": ({"tuning": {"method": "prefix"}}, "unknown tuning method 'prefix'"),
    "k out of range": ({"n_bottom_layers": 7}, "n_bottom_layers=7 is out of range", "0..6"),
    "negative k": ({"n_bottom_layers": -1}, "n_bottom_layers=-1"),
    "k not an integer": ({"n_bottom_layers": "2"}, "n_bottom_layers must be an integer"),
    "one label": ({"num_labels": 1}, "num_labels"),
    "too many labels": ({"num_labels": 10**9}, "num_labels must be at most"),
    "negative lr": ({"lr": -1}, "lr"),
    "zero steps": ({"total_steps": 0}, "total_steps"),
    "head": ({"head": "middle"}, "head must be one of"),
    "unknown field": ({"bogus": 1}, "unknown session config fields ['bogus']"),
    "lora rank": ({"tuning": {"method": "lora", "r": 0}}, "rank r"),
    "lora rank above d": ({"tuning": {"method": "lora", "r": 100000}}, "r=100000", "model width"),
    "unknown lora parameter": ({"tuning": {"method": "lora", "rank": 8}}, "bad parameters for tuning method 'lora'"),
    "tuning not an object": ({"tuning": ["lora"]}, "tuning must be an object"),
    "other model": ({"model": "gpt2"}, "serves model", "gpt2"),
    "not JSON": (b"{not json", "not valid JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_session_config_is_422_naming_the_field(vendor, url, case, http):
    body, *words = BAD_CONFIGS[case]
    sessions = vendor.open_sessions
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    http.expect(http.raw(url, "/v1/sessions", content, headers={"Content-Type": "application/json"}), 422, *words)
    assert vendor.open_sessions == sessions
    if isinstance(body, dict) and "bogus" not in body:  # the client raises the matching error (a ValueError)
        with pytest.raises(ProtocolError, match=re.escape(words[0])):
            HttpTransport(url).open_session(SessionConfig(**body))
        assert vendor.open_sessions == sessions


def test_victim_still_trains_after_all_that(victim):
    info = victim.session
    completed, pending = _state(victim)
    step = completed + 1
    out = victim.forward(ForwardRequest(info.session_id, step, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))
    assert isinstance(out, Outputs) and out.outputs.shape == (2, 2)
    result = victim.backward(BackwardRequest(info.session_id, step, torch.randn(2, 2)))
    assert isinstance(result, BackwardResult) and result.grad_hidden is None
    assert _state(victim) == (step, None)
    with pytest.raises(OutOfOrder, match="out of order"):
        victim.forward(ForwardRequest(info.session_id, step + 2, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))


# -- persistence ---------------------------------------------------------------------------------------------------


def test_restart_continues_training_with_the_same_token(tmp_path, sst2, loopback, train_steps, trainable):
    """Checkpoint, stop the service, start a new Vendor on the same state dir (same port): the customer's token
    still works, and the steps after the restart equal those of an uninterrupted run."""
    train, _ = sst2
    texts, labels = train.texts[:64], train.labels[:64]
    config = (SessionConfig(n_bottom_layers=2, total_steps=10, seed=3), PRIVACY,
              TrainConfig(batch_size=16, noise_seed=9))
    first = Vendor(state_dir=tmp_path, checkpoint_every=50)

    reference = Customer.open(InProcessTransport(first), *config)  # uninterrupted
    expected = train_steps(reference, texts, labels)
    assert sorted(expected) == [1, 2, 3, 4]
    expected_weights = trainable(first, reference.transport.session)
    reference_dir = tmp_path / "sessions" / reference.transport.session.session_id
    reference.transport.export()
    assert reference_dir.is_dir()
    reference.transport.close()
    assert not reference_dir.exists()  # closing deletes the session's state

    server = loopback(create_app(first)).start()
    transport = HttpTransport(server.url, retries=8, backoff=0.1)
    customer = Customer.open(transport, *config)
    info = transport.session
    losses = train_steps(customer, texts, labels, steps={1, 2})
    exported = Path(transport.export())
    assert not exported.is_absolute()  # relative to the vendor's state dir: no server paths for callers
    exported = tmp_path / exported
    assert exported.is_dir() and (exported / "adapter_model.safetensors").is_file()
    with pytest.raises(ValueError, match="vendor chooses"):
        transport.export(str(tmp_path / "elsewhere"))
    server.stop()

    files = [p for p in (tmp_path / "sessions").rglob("*") if p.is_file()]
    assert not any(info.token.encode() in p.read_bytes() for p in files)
    meta = json.loads(next(p for p in files if p.name == "session.json").read_text())
    assert meta["token_sha256"] == hashlib.sha256(info.token.encode()).hexdigest() and meta["completed_step"] == 2
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in files)

    second = Vendor(state_dir=tmp_path)
    assert second.open_sessions == 1 and not second.load_errors
    restarted = loopback(create_app(second), port=server.port)
    threading.Timer(0.3, restarted.start).start()  # the customer's next call meets a closed port and retries
    try:
        with pytest.raises(Forbidden):
            HttpTransport(server.url, retries=8, backoff=0.1, session=SessionInfo(
                info.session_id, "wrong", D, 6, {})).status()
        assert transport.status()["completed_step"] == 2
        losses.update(train_steps(customer, texts, labels, steps={3, 4}))
        assert losses == pytest.approx(expected, abs=1e-6)
        for name, tensor in trainable(second, info).items():
            torch.testing.assert_close(tensor, expected_weights[name], atol=1e-7, rtol=0)
        with pytest.raises(OutOfOrder):
            transport.forward(ForwardRequest(info.session_id, 2, torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.long)))
    finally:
        restarted.stop()
