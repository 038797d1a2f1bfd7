"""Issue 17, findings 2, 5 and 6: bounded inputs and bounded resources on a real vendor service (uvicorn on
loopback, the real MiniLM). Every hostile input that once gave a 500 or poisoned a session is a 4xx naming the field,
a step whose outputs or gradients are not finite changes nothing and is never checkpointed, a forward left without
its backward is freed after the TTL, and a new label count costs a head, not a base model."""

from __future__ import annotations

import json
import time

import pytest
import torch

from splitpriv.contract import limits
from splitpriv.contract.errors import OutOfOrder
from splitpriv.contract import BackwardRequest, ForwardRequest, SessionConfig, decode
from splitpriv.roles.customer import backward_resending
from splitpriv.roles.vendor.session import RequestLimits
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.transport.http_client import HttpTransport

D = 384
CONFIG = SessionConfig(n_bottom_layers=2, total_steps=50)
# a vendor that lets huge values through (to reach the non-finite checks behind the magnitude bound), keeps a
# pending forward 0.4 s and caps requests at 200 token positions and batch x T^2 = 2,000
LAX = RequestLimits(max_abs_value=3.4e38, pending_ttl=0.4, max_tokens_per_request=200, max_attention_cost=2000)


@pytest.fixture(scope="module")
def strict(tmp_path_factory, loopback):
    vendor = Vendor(state_dir=tmp_path_factory.mktemp("strict"))
    server = loopback(create_app(vendor)).start()
    yield vendor, server.url
    server.stop()


@pytest.fixture(scope="module")
def lax(tmp_path_factory, loopback):
    vendor = Vendor(state_dir=tmp_path_factory.mktemp("lax"), limits=LAX, checkpoint_every=1)
    server = loopback(create_app(vendor)).start()
    yield vendor, server.url
    server.stop()


def _open(url):
    transport = HttpTransport(url, retries=0)
    info = transport.open_session(CONFIG)
    return transport, info


def _step(transport, info, step, hidden=None, grad=None):
    hidden = torch.randn(2, 5, D) if hidden is None else hidden
    transport.forward(ForwardRequest(info.session_id, step, hidden, torch.ones(hidden.shape[:2], dtype=torch.long)))
    return transport.backward(BackwardRequest(info.session_id, step, torch.randn(2, 2) / 2 if grad is None else grad))


def _weights(vendor, info):
    return {n: t.clone() for n, t in vendor.session(info.session_id, info.token).tuned.trainable_state().items()}


def _post_config(url, body: bytes | dict, http):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.raw(url, "/v1/sessions", content, headers={"Content-Type": "application/json"})


DEEP = b"[" * 30_000 + b"]" * 30_000  # under the 64 KiB cap, far beyond the parser's recursion limit
HOSTILE_CONFIGS = {  # finding 6: each was a 500 or accepted; now a 422 naming the field
    "total_steps 10**400": ({"total_steps": 10**400}, "total_steps"),
    "JSON nested 30,000 deep": (DEEP, "nested too deeply"),
    "tuning nested 30,000 deep": (b'{"tuning": ' + DEEP + b"}", "nested too deeply"),
    "tuning nested 6 deep": ({"tuning": {"method": "lora", "target_modules": [[[["query"]]]]}},
                             "tuning.target_modules", "nested deeper"),
    "dropout not a boolean": ({"dropout": "yes"}, "dropout must be true or false"),
    "dropout as 1": ({"dropout": 1}, "dropout must be true or false"),
    "train_bottom not a boolean": ({"train_bottom": "no"}, "train_bottom must be true or false"),
    "lone surrogate in declared_noise": ({"declared_noise": {"name": "\ud800"}}, "declared_noise.name",
                                         "not valid unicode"),
    "seed a float": ({"seed": 1.5}, "seed must be an integer"),
    "seed an object": ({"seed": {"a": 1}}, "seed must be an integer"),
    "seed a boolean": ({"seed": True}, "seed must be an integer"),
    "LoRA alpha Infinity": (b'{"tuning": {"method": "lora", "alpha": Infinity}}', "infinity", "not valid json"),
    "lr NaN": (b'{"lr": NaN}', "nan", "not valid json"),
    "LoRA alpha huge": ({"tuning": {"method": "lora", "alpha": 1e300}}, "alpha"),
    "lr huge": ({"lr": 1e300}, "lr must be a finite number"),
    "weight_decay huge": ({"weight_decay": 1e30}, "weight_decay"),
    "long model string": ({"model": "x" * 1000}, "model", "1000 characters"),
    "long tuning string": ({"tuning": {"method": "lora", "target_modules": ["q" * 300]}}, "tuning.target_modules[0]"),
    "many tuning entries": ({"tuning": {"method": "lora", **{f"k{i}": i for i in range(100)}}}, "tuning", "entries"),
    "head a list": ({"head": ["vendor"]}, "head must be one of"),
    "num_labels a boolean": ({"num_labels": True}, "num_labels must be an integer"),
    "privatizer a number": ({"privatizer": 5}, "privatizer must be"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_hostile_session_config_is_422_naming_the_field(strict, case, http):
    vendor, url = strict
    body, *words = HOSTILE_CONFIGS[case]
    before = vendor.open_sessions
    http.expect(_post_config(url, body, http), 422, *words)
    assert vendor.open_sessions == before


def test_config_body_above_64_kib_is_413_and_status_stays_json(strict, http):
    vendor, url = strict
    http.expect(_post_config(url, {"model": "x" * (limits.MAX_CONFIG_BYTES + 10)}, http), 413, "above")
    http.expect(_post_config(url, b"[" * 100_000 + b"]" * 100_000, http), 413, "above", "65536")  # the 100,000 deep
    transport, info = _open(url)
    status = transport.status()  # what a lone surrogate used to break: the config echoed back as JSON
    assert status["config"]["dropout"] is True and status["completed_step"] == 0
    transport.close()


def test_in_process_configs_are_checked_too():
    for bad, word in (({"tuning": {"method": "lora", "alpha": float("inf")}}, "tuning.alpha"),
                      ({"total_steps": 10**400}, "total_steps"), ({"dropout": None}, "dropout")):
        with pytest.raises(ValueError, match=word):
            SessionConfig(**bad).validate()


# -- finding 5: magnitude ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [3e38, 2e4])
def test_huge_finite_inputs_are_refused_by_magnitude(strict, value, http):
    vendor, url = strict
    transport, info = _open(url)
    _step(transport, info, 1)
    before = _weights(vendor, info)
    hidden = torch.randn(2, 5, D)
    hidden[1, 3, 7] = value
    body = ForwardRequest(info.session_id, 2, hidden, torch.ones(2, 5, dtype=torch.long)).to_bytes()
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/forward", body, info.token), 400, "hidden", "magnitude",
            "10000")
    transport.forward(ForwardRequest(info.session_id, 2, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))
    grad = BackwardRequest(info.session_id, 2, torch.full((2, 2), value)).to_bytes()
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/backward", grad, info.token), 400, "grad_outputs", "magnitude")
    assert transport.status()["completed_step"] == 1
    assert all(torch.equal(before[n], t) for n, t in _weights(vendor, info).items())
    transport.close()


def test_non_finite_outputs_or_gradients_leave_the_session_untouched_and_unsaved(lax, http):
    vendor, url = lax
    transport, info = _open(url)
    _step(transport, info, 1)  # checkpoint_every=1: step 1 is on disk
    before = _weights(vendor, info)
    path = f"/v1/sessions/{info.session_id}"

    huge = torch.full((2, 5, D), 3e38)
    body = ForwardRequest(info.session_id, 2, huge, torch.ones(2, 5, dtype=torch.long)).to_bytes()
    http.expect(http.raw(url, f"{path}/forward", body, info.token), 400, "outputs for step 2 are not finite", "unchanged")
    assert transport.status()["pending_step"] is None

    transport.forward(ForwardRequest(info.session_id, 2, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))
    grad = BackwardRequest(info.session_id, 2, torch.full((2, 2), 3e38)).to_bytes()
    http.expect(http.raw(url, f"{path}/backward", grad, info.token), 400, "gradients of step 2 are not finite",
            "send the forward of step 2 again")
    status = transport.status()
    assert (status["completed_step"], status["pending_step"], status["checkpointed_step"]) == (1, None, 1)
    after = _weights(vendor, info)
    assert all(torch.equal(before[n], t) for n, t in after.items())
    assert all(bool(torch.isfinite(t).all()) for t in after.values())

    _step(transport, info, 2)  # the session trains on
    assert transport.status()["checkpointed_step"] == 2
    session = vendor.session(info.session_id, info.token)
    with torch.no_grad():
        next(iter(session.tuned.parameters()))[0].fill_(float("nan"))  # however it got there, NaN is not saved
    session.completed_step += 1
    http.expect(http.raw(url, f"{path}/checkpoint", token=info.token), 400, "non-finite", "not checkpointed")
    assert transport.status()["checkpointed_step"] == 2
    transport.close()


# -- finding 2: cost per request, pending forwards, base models ----------------------------------------------------


def test_request_cost_counts_batch_times_t_squared():
    for ordinary in ((32, 64), (128, 64), (32, 512), (128, 256)):  # training, evaluation, causal-LM evaluation
        assert limits.request_cost(*ordinary, D) is None, ordinary
    assert "token positions" in limits.request_cost(170, 512, D)  # the 16.6 KB request that held 2.6 GiB
    assert "attention-cost" in limits.request_cost(40, 512, D)  # 20,480 positions, but 40 x 512^2 > 2^23


def test_costly_requests_are_413(lax, http):
    vendor, url = lax
    transport, info = _open(url)
    for shape, words in (((5, 41), ("205 token positions", "200")), ((1, 45), ("tokens^2", "2025", "2000"))):
        hidden = torch.randn(*shape, D)
        body = ForwardRequest(info.session_id, 1, hidden, torch.ones(shape, dtype=torch.long)).to_bytes()
        http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/forward", body, info.token), 413, *words)
    assert transport.status()["pending_step"] is None
    transport.close()


def test_a_forward_without_its_backward_expires_and_is_resent(lax, http):
    vendor, url = lax
    transport, info = _open(url)
    hidden, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)
    first = transport.forward(ForwardRequest(info.session_id, 1, hidden, mask))
    assert vendor.pending_forwards() >= 1
    deadline = time.monotonic() + 10
    while transport.status()["pending_step"] is not None:  # the service's reaper frees it, with no request needed
        assert time.monotonic() < deadline
        time.sleep(0.1)
    late = BackwardRequest(info.session_id, 1, torch.randn(2, 2) / 2)
    http.expect(http.raw(url, f"/v1/sessions/{info.session_id}/backward", late.to_bytes(), info.token), 409, "expired",
            "send the forward of step 1 again")
    with pytest.raises(OutOfOrder, match="expired"):
        transport.backward(late)
    # the customer's rule: resend the *same* forward (the same noisy vectors), then the backward
    backward_resending(transport, ForwardRequest(info.session_id, 1, hidden, mask), first, late)
    assert transport.status()["completed_step"] == 1
    transport.close()


def test_a_forward_the_session_would_refuse_is_refused_before_its_body_is_read(strict, http):
    """The flood of the service benchmark: forwards sent while another step's is pending. The bodies below are not
    messages at all, so a 409 (not a 400 "malformed") shows they were never read; a retry of the pending step that
    announces it is answered from the vendor's cache, and a header that contradicts the message is a 400."""
    from splitpriv.contract import STEP_HEADER

    _, url = strict
    transport, info = _open(url)
    path, junk = f"/v1/sessions/{info.session_id}/forward", b"\0" * 200_000
    http.expect(http.raw(url, path, junk, info.token, headers={STEP_HEADER: "3"}), 409, "step 3 is out of order",
            "next forward is step 1")
    http.expect(http.raw(url, path, junk, info.token, headers={STEP_HEADER: "one"}), 400, STEP_HEADER, "integer")
    hidden, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)
    first = ForwardRequest(info.session_id, 1, hidden, mask)
    lying = ForwardRequest(info.session_id, 2, hidden, mask).to_bytes()
    http.expect(http.raw(url, path, lying, info.token, headers={STEP_HEADER: "1"}), 400, "does not match its header")
    reply = transport.forward(first)
    for header in ({STEP_HEADER: "2"}, {}):  # another step, or no step announced, while step 1 waits
        http.expect(http.raw(url, path, junk, info.token, headers=header), 409, "step 1 is waiting for its backward",
                "was not read")
    again = http.raw(url, path, junk, info.token, headers={STEP_HEADER: "1"})  # a retry: the cached reply, body unread
    assert again.status_code == 200 and torch.equal(decode(again.content).outputs, reply.outputs)
    transport.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2) / 2))
    second = ForwardRequest(info.session_id, 2, hidden, mask)  # a client that announces nothing is read as before
    assert http.raw(url, path, second.to_bytes(), info.token).status_code == 200  # when nothing is pending
    transport.backward(BackwardRequest(info.session_id, 2, torch.randn(2, 2) / 2))
    transport.close()


def test_another_label_count_shares_the_base_model(strict):
    from splitpriv import load_model

    vendor, _ = strict
    two, _ = vendor.base(2)
    five, _ = vendor.base(5)
    shared = {n for n, p in five.named_parameters() if p is dict(two.named_parameters()).get(n)}
    own = {n for n, _ in five.named_parameters()} - shared
    assert own and all(n.startswith("classifier") for n in own), own
    reference, _ = load_model(num_labels=5)  # what a vendor loading it separately would hold
    for name, tensor in reference.state_dict().items():
        assert torch.equal(five.state_dict()[name], tensor), name
    info = vendor.open_session(SessionConfig(n_bottom_layers=2, num_labels=5, total_steps=5))
    vendor.close(info.session_id, info.token)


def test_idle_sessions_are_unloaded_reloaded_and_finally_closed(tmp_path, http, loopback):
    """Finding 1: a session idle for idle_unload s leaves memory for its checkpoint and comes back on its next call
    unchanged; one idle for session_ttl s (its customer was killed) is closed, its state deleted."""
    from splitpriv.roles.vendor.idle import Unloaded

    vendor = Vendor(state_dir=tmp_path, checkpoint_every=None, idle_unload=0.3, session_ttl=2.5)
    server = loopback(create_app(vendor)).start()
    try:
        transport, info = _open(server.url)
        _step(transport, info, 1)
        weights = _weights(vendor, info)

        def wait_for(condition):
            deadline = time.monotonic() + 15
            while not condition():
                assert time.monotonic() < deadline
                time.sleep(0.05)

        wait_for(lambda: isinstance(vendor._sessions[info.session_id], Unloaded))
        assert vendor.open_sessions == 1  # it still counts (and against its key's quota)
        assert "splitpriv_sessions_unloaded 1.0" in http.raw(server.url, "/metrics", method="GET").text
        assert transport.status()["completed_step"] == 1  # reloaded by its next call
        assert all(torch.equal(weights[n], t) for n, t in _weights(vendor, info).items())
        _step(transport, info, 2)
        wait_for(lambda: info.session_id not in vendor._sessions)
        http.expect(http.raw(server.url, f"/v1/sessions/{info.session_id}/status", method="GET", token=info.token), 404)
        assert not (tmp_path / "sessions" / info.session_id).exists()
    finally:
        server.stop()


def test_a_restarted_vendor_restores_sessions_unloaded(tmp_path):
    from splitpriv.roles.vendor.idle import Unloaded

    first = Vendor(state_dir=tmp_path)
    info = first.open_session(CONFIG)
    first.forward(ForwardRequest(info.session_id, 1, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)),
                  info.token)
    first.backward(BackwardRequest(info.session_id, 1, torch.randn(2, 2)), info.token)
    weights = _weights(first, info)
    first.checkpoint_all()
    second = Vendor(state_dir=tmp_path, idle_unload=60)
    assert isinstance(second._sessions[info.session_id], Unloaded) and not second.load_errors
    assert second.status(info.session_id, info.token)["completed_step"] == 1  # loaded by its first call
    assert all(torch.equal(weights[n], t) for n, t in _weights(second, info).items())


def test_pending_forwards_together_are_bounded_and_a_busy_vendor_is_retried(tmp_path, http, loopback):
    """One tenant flooding forwards without backwards cannot make the vendor hold unbounded graphs: past the
    vendor-wide budget a forward gets 503 + Retry-After, which the HTTP client waits out."""
    import threading

    vendor = Vendor(limits=RequestLimits(max_pending_cost=120))  # 2 pending forwards of [2, 5] (2 x 25 each)
    server = loopback(create_app(vendor)).start()
    try:
        flood = [_open(server.url) for _ in range(3)]
        for transport, info in flood[:2]:
            transport.forward(ForwardRequest(info.session_id, 1, torch.randn(2, 5, D),
                                             torch.ones(2, 5, dtype=torch.long)))
        transport, info = flood[2]
        body = ForwardRequest(info.session_id, 1, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)).to_bytes()
        busy = http.raw(server.url, f"/v1/sessions/{info.session_id}/forward", body, info.token)
        http.expect(busy, 503, "pending forwards", "retry")
        assert busy.headers["retry-after"] == "1"
        patient = HttpTransport(server.url, backoff=0.1, max_backoff=0.2, deadline=20)
        patient.attach(info)
        first, first_info = flood[0]
        threading.Timer(0.5, lambda: first.backward(BackwardRequest(first_info.session_id, 1, torch.randn(2, 2)))
                        ).start()
        patient.forward(ForwardRequest(info.session_id, 1, torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)))
        assert patient.attempts > 1 and vendor.pending_forwards() == 2
    finally:
        server.stop()


def test_the_customer_refuses_to_send_what_the_vendor_would_refuse(strict):
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.transport import InProcessTransport

    vendor, _ = strict
    transport = InProcessTransport(vendor)
    customer = Customer.open(transport, SessionConfig(n_bottom_layers=0, total_steps=2),
                             PrivacyConfig(mechanism="dchi", eta=1e-3), TrainConfig(noise_seed=0))
    sent = transport.bytes_sent
    with pytest.raises(ValueError, match=r"above the vendor's limit \|x\| <= 10000"):
        customer.predict(["a fine film"])
    assert transport.bytes_sent == sent
    transport.close()
