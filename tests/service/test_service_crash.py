"""Issue 17, finding 3 (the vendor's side): the vendor goes down between a step's forward and its backward and comes
back from its state dir as a new process would; the customer waits the restart out, is told its forward was lost
(409), resends the *same* privatized vectors, and the run ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from recording_vendor import CuriousRecorder

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.transport import InProcessTransport
from splitpriv.transport.http_client import HttpTransport

PRIVACY = PrivacyConfig(mechanism="dchi", eta=10.0)
CONFIG = (SessionConfig(n_bottom_layers=2, total_steps=10, seed=4), PRIVACY, TrainConfig(batch_size=16, noise_seed=7))


@pytest.fixture(scope="module")
def texts(data_dir):
    from splitpriv.data import load_dataset

    train = load_dataset("sst2", "train", limit=64, seed=0)
    return train.texts, train.labels


def test_a_vendor_restart_mid_step_costs_nothing(tmp_path, texts, loopback, train_steps, trainable):
    reference_vendor = Vendor()
    reference = Customer.open(InProcessTransport(reference_vendor), *CONFIG)
    expected = train_steps(reference, *texts)
    expected_weights = trainable(reference_vendor, reference.transport.session)
    assert sorted(expected) == [1, 2, 3, 4]

    first = loopback(create_app(Vendor(state_dir=tmp_path, checkpoint_every=1))).start()
    port, servers = first.port, [first]
    transport = HttpTransport(first.url, backoff=0.1, max_backoff=0.3, deadline=60)
    customer = Customer.open(transport, *CONFIG)
    sent = []
    transport.tap = lambda direction, msg: sent.append(msg) if msg.kind == "forward" else None
    backward = transport.backward

    def crash_before_step_3(request):
        if request.step == 3 and len(servers) == 1:
            servers[0].stop()  # the pending forward of step 3 dies with this vendor
            restarted = loopback(create_app(Vendor(state_dir=tmp_path, checkpoint_every=1)), port=port)
            servers.append(restarted)
            threading.Timer(0.5, restarted.start).start()  # meanwhile the customer's backward meets a closed port
        return backward(request)

    transport.backward = crash_before_step_3
    try:
        losses = train_steps(customer, *texts)
        assert len(servers) == 2 and servers[1].server.started
        assert losses == pytest.approx(expected, abs=1e-6)
        vendor = servers[1].server.config.app.state.vendor
        for name, tensor in trainable(vendor, transport.session).items():
            torch.testing.assert_close(tensor, expected_weights[name], atol=1e-7, rtol=0)
        step3 = [m for m in sent if m.step == 3]
        assert len(step3) == 2 and torch.equal(step3[0].hidden, step3[1].hidden)  # the same noisy vectors, resent
    finally:
        servers[-1].stop()


class Recording(CuriousRecorder):
    """The vendor's app behind a curious recorder that keeps every forward it is sent (its hidden vectors)."""

    seen: list = []

    def __init__(self, app):
        super().__init__(app, lambda req: Recording.seen.append((req.session_id, req.step, req.hidden.clone())))


def _rows(batches) -> list:
    """Each sentence's real-token vectors (padding is zero) from sent [B, T, d] batches."""
    out = []
    for hidden in batches:
        for row in hidden:
            out.append(row[: int((row.abs().sum(-1) != 0).sum())])
    return out


def _crash_at_backward(transport, step):
    """The customer dies (an exception out of the run) right after step ``step``'s forward reached the vendor."""
    backward = transport.backward

    def dying(request):
        if request.step == step:
            raise KeyboardInterrupt(f"customer killed at step {step}")
        return backward(request)

    transport.backward = dying


@pytest.mark.parametrize("noise_seed", [3, None], ids=["fixed noise", "OS noise"])
def test_a_killed_customer_resumes_and_sends_no_second_noisy_copy(tmp_path, noise_seed, loopback):
    """kill the customer after step 4's forward (and, with OS noise, restart the vendor too); `resume` continues
    from the journal. With fixed seeds the run equals an uninterrupted one; with OS noise every step's vectors
    reach the vendor identical however often they are sent (noise drawn once per sentence over 2 epochs)."""
    from splitpriv.config import PrivacyConfig
    from splitpriv.runs.run import RunConfig, resume, run

    state = tmp_path / "vendor"
    server = loopback(Recording(create_app(Vendor(state_dir=state, checkpoint_every=1)))).start()
    servers = [server]
    config = RunConfig(dataset="sst2-sample", train_limit=48, eval_limit=16, bottom_layers=2, vendor_url=server.url,
                       privacy=PrivacyConfig(mechanism="dchi", eta=10.0),
                       train=TrainConfig(batch_size=16, epochs=2, noise_seed=noise_seed, eval_batch_size=16))
    try:
        expected = None
        if noise_seed is not None:
            expected = run(config, tmp_path / "whole", progress=False, transport=HttpTransport(server.url))
        transport = HttpTransport(server.url)
        _crash_at_backward(transport, 4)
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path / "run", progress=False, transport=transport)
        sid = transport.session.session_id
        if noise_seed is None:  # the vendor dies too, and comes back from its state dir
            server.stop()
            restarted = Recording(create_app(Vendor(state_dir=state, checkpoint_every=1)))
            servers.append(loopback(restarted, port=server.port).start())
        if noise_seed is not None:
            metrics, resumed = resume(tmp_path / "run", progress=False)
            resumed.close()
        else:  # through the command line: `splitpriv train --resume DIR` (it closes the session at the end)
            from typer.testing import CliRunner

            from splitpriv.cli import app as cli

            done = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--no-progress", "--json"])
            assert done.exit_code == 0, done.output
            metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
            assert sid not in servers[-1].server.config.app.state.vendor._sessions  # closed at the end
        assert len(metrics["losses"]) == 6  # 3 from before the crash (journal) + 3 after
        if expected is not None:
            assert metrics["losses"] == pytest.approx(expected["losses"], abs=1e-6)
            assert metrics["accuracy"] == expected["accuracy"]
        copies: dict[int, list] = {}
        for session_id, step, hidden in Recording.seen:
            if session_id == sid:
                copies.setdefault(step, []).append(hidden)
        assert sorted(copies) == [1, 2, 3, 4, 5, 6] and len(copies[4]) == 2
        for step, sent in copies.items():
            assert all(torch.equal(sent[0], h) for h in sent), f"step {step} reached the vendor with new noise"
        # noise once: epoch 2 (steps 4-6, after the resume) re-sends epoch 1's vectors of every sentence
        first, second = _rows(copies[s][0] for s in (1, 2, 3)), _rows(copies[s][0] for s in (4, 5, 6))
        assert len(first) == len(second) == 48
        assert all(any(a.shape == b.shape and torch.equal(a, b) for b in first) for a in second)
    finally:
        servers[-1].stop()


def test_a_session_survives_a_crash_before_its_first_step(tmp_path):
    """A persistent vendor writes a session when it opens: killed before any step completed (so before any
    periodic checkpoint), it comes back with the session at step 0 and the same token."""
    info = Vendor(state_dir=tmp_path, checkpoint_every=1).open_session(CONFIG[0])
    restarted = Vendor(state_dir=tmp_path, checkpoint_every=1)
    assert restarted.status(info.session_id, info.token)["completed_step"] == 0
    restarted.close(info.session_id, info.token)
    assert not (tmp_path / "sessions" / info.session_id).exists()
