"""Issue 17: schemathesis (a third-party OpenAPI fuzzer) drives the vendor app in process from its own OpenAPI
schema, without credentials and with a valid API key, session token and session id; no answer may be a 5xx.

Bounded: ``EXAMPLES`` cases per operation, generation mode (schema-conforming and not) and credential mode, and
``BUDGET_S`` seconds in all. The counts are printed (``pytest -s``) and checked."""

from __future__ import annotations

import time

import pytest

from splitpriv.protocol import SessionConfig
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.service.accounts import KeyStore, Quotas

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 30
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
