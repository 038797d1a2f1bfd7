"""Issue 17: schemathesis (a third-party OpenAPI fuzzer) drives the vendor app in process from its own OpenAPI
schema, without credentials and with a valid API key, session token and session id; no answer may be a 5xx.

Bounded: ``EXAMPLES`` cases per operation, generation mode (schema-conforming and not) and credential mode, and
``BUDGET_S`` seconds in all. The counts are printed (``pytest -s``) and checked."""

from __future__ import annotations

import time

import pytest

from splitpriv.contract import SessionConfig
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.service.accounts import KeyStore, Quotas

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 30
D_MODEL = 384
BUDGET_S = 100.0
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    state = tmp_path_factory.mktemp("fuzz-keys")
    store = KeyStore(state)
    key, record = store.create("fuzzer", Quotas(max_sessions=8), admin=True)
    vendor = Vendor(max_num_labels=4)  # no state dir: /checkpoint answers 400; keys from the store above
    app = create_app(vendor, keys=store)
    return app, vendor, key, record


def test_fuzzed_requests_never_get_a_5xx(target):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    app, vendor, key, record = target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    session = {}

    def credentials(case) -> dict:
        """A valid key for opening, a live session's token and id for everything else."""
        if case.operation.path == "/v1/sessions" or case.operation.path == "/metrics":
            return {"Authorization": f"Bearer {key}"}
        if session.get("id") not in vendor._sessions:
            info = vendor.open_session(SessionConfig(n_bottom_layers=2, total_steps=10), owner=record.key_id)
            session.update(id=info.session_id, token=info.token)
        if "session_id" in (case.path_parameters or {}):
            case.path_parameters["session_id"] = session["id"]
        return {"Authorization": f"Bearer {session['token']}"}

    counts = {"requests": 0, "5xx": 0, "unsatisfiable": 0}
    failures = []
    start = time.monotonic()
    for mode in ("anonymous", "valid credentials"):
        for generation in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            for operation in operations:
                @given(case=operation.as_strategy(generation_mode=generation))
                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                def call(case):
                    if time.monotonic() - start > BUDGET_S:
                        return
                    headers = credentials(case) if mode != "anonymous" else None
                    response = case.call(headers=headers)
                    counts["requests"] += 1
                    if response.status_code >= 500:
                        counts["5xx"] += 1
                        failures.append((mode, case.method, case.operation.path, response.status_code,
                                         response.text[:300]))

                try:
                    call()
                except Unsatisfiable:  # nothing to get wrong (e.g. GET /v1/health has no input): no negative case
                    counts["unsatisfiable"] += 1
    print(f"\nschemathesis: {counts['requests']} requests, {counts['5xx']} answered 5xx, "
          f"{time.monotonic() - start:.0f} s, {len(operations)} operations "
          f"({counts['unsatisfiable']} operation/mode pairs with no negative case)")
    assert counts["requests"] >= 200
    assert not failures, failures[:5]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fuzzed_protocol_messages_never_get_a_5xx(target):
    """The bodies schemathesis sends are random bytes, which the decoder refuses at once. Here hypothesis starts
    from a well-formed message for the route and session (frozen bottom, trained bottom, customer-held head) and
    mutates it: dtypes, shapes, values (NaN, Inf, 3e38, 2e4, zeros), the step, the kind, fields added or dropped."""
    import json

    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from safetensors.torch import save as st_save
    from starlette.testclient import TestClient

    app, vendor, key, record = target
    client = TestClient(app)
    sessions = [vendor.open_session(SessionConfig(n_bottom_layers=2, total_steps=50, **kw), owner=record.key_id)
                for kw in ({}, {"train_bottom": True}, {"head": "customer"})]
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
              torch.bool]
    steps = st.one_of(st.integers(0, 4), st.sampled_from([10**30, -(2**63), True, None, 1.5, "2", [1]]))
    mutation = st.tuples(st.sampled_from(["dtype", "shape", "value", "step", "kind", "drop", "add", "pad"]),
                         st.sampled_from(["hidden", "attention_mask", "grad_outputs"]), st.sampled_from(dtypes),
                         st.sampled_from([0, 1, 2, 3, 7, 384, 600]), st.sampled_from(["nan", "inf", 3e38, 2e4, 0.0]),
                         steps, st.sampled_from(["forward", "backward", "predict", "decode", "outputs", "x"]))

    def valid(route: str, which: int, batch: int, tokens: int, step):
        sid = sessions[which].session_id
        if route == "backward":
            shape = (batch, tokens, D_MODEL) if which == 2 else (batch, 2)
            return route, {"session_id": sid, "step": step}, {"grad_outputs": torch.randn(shape) / batch}
        fields = {"session_id": sid, **({"step": step} if route == "forward" else {}),
                  **({"reset": True} if route == "decode" else {})}
        return route, fields, {"hidden": torch.randn(batch, tokens, D_MODEL),
                               "attention_mask": torch.ones(batch, tokens, dtype=torch.uint8)}

    @given(route=st.sampled_from(["forward", "backward", "predict", "decode"]), which=st.integers(0, 2),
           batch=st.integers(1, 3), tokens=st.integers(1, 6), step=st.integers(1, 3),
           mutations=st.lists(mutation, max_size=2))
    @settings(max_examples=600, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def post(route, which, batch, tokens, step, mutations):
        kind, fields, tensors = valid(route, which, batch, tokens, step)
        for what, name, dtype, size, value, new_step, new_kind in mutations:
            if not tensors:
                break
            target_name = name if name in tensors else next(iter(tensors))
            t = tensors[target_name]
            if what == "dtype":
                tensors[target_name] = t.to(dtype)
            elif what == "shape":
                tensors[target_name] = torch.randn(*t.shape[:-1], size) if size else t[..., :0]
            elif what == "value" and t.numel():
                t = t.clone().float()
                t.view(-1)[0] = float(value)
                tensors[target_name] = t
            elif what == "pad" and "attention_mask" in tensors and tokens > 1:
                tensors["attention_mask"][..., -1] = 0  # padding the customer did not zero
            elif what == "step":
                fields["step"] = new_step
            elif what == "kind":
                kind = new_kind
            elif what == "drop":
                tensors.pop(target_name)
            elif what == "add":
                tensors["input_ids"] = torch.ones(batch, tokens, dtype=torch.long)
        info = sessions[which]
        body = st_save({k: v.contiguous() for k, v in tensors.items()},
                       metadata={"kind": kind, "fields": json.dumps(fields)})
        response = client.post(f"/v1/sessions/{info.session_id}/{route}", content=body,
                               headers={"Authorization": f"Bearer {info.token}"})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        assert response.status_code < 500, (route, kind, fields, mutations, response.text[:300])

    counts = {}
    post()
    print(f"\nprotocol messages: {sum(counts.values())} requests, 0 answered 5xx; by status {sorted(counts.items())}")
    assert counts.get(200, 0) >= 20  # well-formed ones got through to the top
