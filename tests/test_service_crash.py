"""Issue 17, finding 3 (the vendor's side): the vendor goes down between a step's forward and its backward and comes
back from its state dir as a new process would; the customer waits the restart out, is told its forward was lost
(409), resends the *same* privatized vectors, and the run ends exactly as an uninterrupted one."""

from __future__ import annotations

import threading

import pytest
import torch
from test_service import PRIVACY, Server, _train, _trainable

from splitpriv.config import TrainConfig
from splitpriv.protocol import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.service import create_app
from splitpriv.transport import InProcessTransport
from splitpriv.transport.http_client import HttpTransport

CONFIG = (SessionConfig(n_bottom_layers=2, total_steps=10, seed=4), PRIVACY, TrainConfig(batch_size=16, noise_seed=7))


@pytest.fixture(scope="module")
def texts(data_dir):
    from splitpriv.data import load_dataset

    train = load_dataset("sst2", "train", limit=64, seed=0)
    return train.texts, train.labels


def test_a_vendor_restart_mid_step_costs_nothing(tmp_path, texts):
    reference_vendor = Vendor()
    reference = Customer.open(InProcessTransport(reference_vendor), *CONFIG)
    expected = _train(reference, *texts)
    expected_weights = _trainable(reference_vendor, reference.transport.session)
    assert sorted(expected) == [1, 2, 3, 4]

    first = Server(create_app(Vendor(state_dir=tmp_path, checkpoint_every=1))).start()
    port, servers = first.port, [first]
    transport = HttpTransport(first.url, backoff=0.1, max_backoff=0.3, deadline=60)
    customer = Customer.open(transport, *CONFIG)
    sent = []
    transport.tap = lambda direction, msg: sent.append(msg) if msg.kind == "forward" else None
    backward = transport.backward

    def crash_before_step_3(request):
        if request.step == 3 and len(servers) == 1:
            servers[0].stop()  # the pending forward of step 3 dies with this vendor
            restarted = Server(create_app(Vendor(state_dir=tmp_path, checkpoint_every=1)), port=port)
            servers.append(restarted)
            threading.Timer(0.5, restarted.start).start()  # meanwhile the customer's backward meets a closed port
        return backward(request)

    transport.backward = crash_before_step_3
    try:
        losses = _train(customer, *texts)
        assert len(servers) == 2 and servers[1].server.started
        assert losses == pytest.approx(expected, abs=1e-6)
        vendor = servers[1].server.config.app.state.vendor
        for name, tensor in _trainable(vendor, transport.session).items():
            torch.testing.assert_close(tensor, expected_weights[name], atol=1e-7, rtol=0)
        step3 = [m for m in sent if m.step == 3]
        assert len(step3) == 2 and torch.equal(step3[0].hidden, step3[1].hidden)  # the same noisy vectors, resent
    finally:
        servers[-1].stop()
