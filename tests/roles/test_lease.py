"""Session leases with fencing (splitpriv.roles.vendor.lease) and vendor replicas sharing a state dir
(splitpriv.roles.vendor.replica), in one process: two replicas never serve one session at once, a replica that lost its
lease cannot commit, and a session moved to another replica continues exactly where its checkpoint left it."""

from __future__ import annotations

import time

import pytest
import torch

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract.errors import UnknownSession
from splitpriv.contract import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor.lease import LeaseLost, Leases
from splitpriv.roles.vendor.replica import ReplicaVendor
from splitpriv.roles.vendor import Vendor
from splitpriv.transport import InProcessTransport


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_one_live_lease_per_session_and_a_stale_holder_is_fenced_off(tmp_path):
    clock = Clock()
    a, b = Leases(tmp_path, "a", ttl=10, clock=clock), Leases(tmp_path, "b", ttl=10, clock=clock)
    assert a.acquire("s1") == 1
    assert a.acquire("s1") == 1, "re-acquiring one's own lease keeps the epoch"
    assert b.acquire("s1") is None
    clock.now += 9
    assert a.renew("s1", 1) and b.acquire("s1") is None
    clock.now += 11  # a stalls past its lease
    assert b.acquire("s1") == 2
    assert not a.renew("s1", 1)
    with pytest.raises(LeaseLost, match="epoch 1"):
        with a.fenced("s1", 1):
            pytest.fail("a stale holder must not commit")
    with b.fenced("s1", 2):
        pass
    b.release("s1", 2)
    assert a.acquire("s1") == 3, "a released lease is free at once, with a higher epoch"
    a.release("s1", 3, forget=True)
    assert a.holder_of("s1") is None
    with pytest.raises(ValueError, match="not a session id"):
        a.acquire("../escape")


def test_an_untaken_expired_lease_is_simply_renewed(tmp_path):
    clock = Clock()
    a = Leases(tmp_path, "a", ttl=5, clock=clock)
    assert a.acquire("s") == 1
    clock.now += 60
    assert a.renew("s", 1)
    with a.fenced("s", 1):
        pass


CONFIG = (SessionConfig(n_bottom_layers=2, total_steps=6, seed=0, dropout=False),
          PrivacyConfig(mechanism="dchi", eta=10.0), TrainConfig(batch_size=8, max_length=32, noise_seed=5))


@pytest.mark.slow
def test_a_session_moves_between_replicas_and_continues_exactly(tmp_path, data_dir, train_steps):
    from splitpriv.data import load_dataset

    train = load_dataset("sst2", "train", limit=48, seed=0)
    texts, labels = train.texts, train.labels
    reference = Customer.open(InProcessTransport(Vendor()), *CONFIG)
    expected = train_steps(reference, texts, labels, range(1, 7))

    ttl = 1.0
    a = ReplicaVendor(state_dir=tmp_path, replica_id="a", lease_ttl=ttl, checkpoint_every=1)
    b = ReplicaVendor(state_dir=tmp_path, replica_id="b", lease_ttl=ttl, checkpoint_every=1)
    info = a.open_session(CONFIG[0])
    assert a.open_sessions == 0 and a.leases.holder_of(info.session_id)["expires"] == 0, \
        "the opener lets a new session go at once: the replica the router picks for its calls claims it"
    a.close(info.session_id, info.token)

    transport = InProcessTransport(a)
    customer = Customer.open(transport, *CONFIG)  # the bottom's download claimed it back on a
    sid = transport.session.session_id
    transport.vendor = b
    with pytest.raises(LeaseLost, match="another replica"):
        customer.transport.status()
    time.sleep(ttl * 1.2)  # a dies after the download
    got = train_steps(customer, texts, labels, {1, 2, 3})
    assert b.leases.holder_of(sid)["holder"] == "b"
    transport.vendor = a
    with pytest.raises(LeaseLost, match="another replica"):  # b's lease is live: a must not serve it
        customer.transport.status()
    time.sleep(ttl * 1.2)  # b dies too
    got.update(train_steps(customer, texts, labels, {4, 5, 6}))
    assert got == pytest.approx(expected, abs=1e-6)
    assert a.leases.holder_of(sid) == {"holder": "a", "epoch": 3, "expires": pytest.approx(time.time(), abs=5)}
    ref = reference.transport
    mine = a.session(sid, transport.session.token).tuned.trainable_state()
    theirs = ref.vendor.session(ref.session.session_id, ref.session.token).tuned.trainable_state()
    for name, tensor in mine.items():
        torch.testing.assert_close(tensor, theirs[name], atol=1e-6, rtol=0)

    stale = b._sessions[sid]  # b wakes up: its copy is stale (step 3), its lease gone
    with pytest.raises(LeaseLost, match="another replica"):
        b._checkpoint(stale)
    transport.vendor = b
    with pytest.raises(LeaseLost):
        customer.transport.status()
    assert (tmp_path / "sessions" / sid / "CURRENT").read_text().startswith("ckpt-00000006"), \
        "the stale replica committed nothing over its successor's checkpoint"
    transport.vendor = a
    token = transport.session.token
    customer.transport.close()
    with pytest.raises(UnknownSession):
        b.session(sid, token)
    assert a.leases.holder_of(sid) is None


def test_an_idle_session_whose_lease_ran_out_untaken_is_still_checkpointed(tmp_path, data_dir, train_steps):
    from splitpriv.data import load_dataset

    train = load_dataset("sst2", "train", limit=16, seed=0)
    vendor = ReplicaVendor(state_dir=tmp_path, replica_id="a", lease_ttl=5, checkpoint_every=0)
    vendor.leases.clock = clock = Clock()
    transport = InProcessTransport(vendor)
    customer = Customer.open(transport, *CONFIG)
    train_steps(customer, train.texts, train.labels, {1, 2})
    clock.now += 3600  # idle for an hour: the lease expired, nobody took it
    info = transport.session
    assert vendor.checkpoint(info.session_id, info.token)["completed_step"] == 2
    assert vendor.leases.holder_of(info.session_id)["expires"] > clock.now
