"""Issue 18, scale up, training: training forwards of dropout-free LoRA sessions that arrive together run as one
multi-tenant forward with one shared backward, and every session's losses, weights and returned gradients equal
its lone run's (float32 tolerance); a member that withholds its backward delays the others by ``backward_wait``
only; sessions with dropout train alone."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from splitpriv.batching import collate, encode_texts
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract.errors import OutOfOrder
from splitpriv.contract import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor.tenant_batch import BatchTop, _Item, train_group_key
from splitpriv.roles.vendor.training_batch import run_training
from splitpriv.roles.vendor import Vendor
from splitpriv.service.app import create_app
from splitpriv.transport import HttpTransport, InProcessTransport

TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32: only the order of the sums differs between a batch and a lone step
LR = 1e-2


def _assert_weights_match(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Weights after STEPS AdamW steps. Adam's update m/(sqrt(v) + eps) turns a float32 rounding difference in a
    gradient component within float noise of zero into any update in [-lr, lr] (about), so such a weight may move
    by up to 2 lr a step; every other weight matches at float32 tolerance. Checked: no weight further apart than
    that bound, and all but 1% of them within float32 tolerance (one step's gradients are compared at float32
    tolerance in the one-round test below)."""
    assert (got - want).abs().max() <= 2 * LR * STEPS, what
    close = torch.isclose(got, want, **TOL).float().mean()
    assert close >= 0.99, f"{what}: only {close:.2%} of the weights match at float32 tolerance"


PRIVACY = PrivacyConfig(mechanism="dchi", eta=10.0)
STEPS = 3


def _config(seed: int, **kw) -> SessionConfig:
    return SessionConfig(n_bottom_layers=2, total_steps=STEPS, seed=seed, lr=LR, dropout=kw.pop("dropout", False),
                         **kw)


# three tenants of one group: different seeds (weights, heads, data order); one trains its bottom too, so the
# vendor returns it d loss / d representations from the shared backward
SPECS = [_config(0), _config(1, train_bottom=True), _config(2)]


@pytest.fixture(scope="module")
def train_set(data_dir):
    from splitpriv.data import load_dataset

    return load_dataset("sst2", "train", limit=24, seed=0)


class _SlowBackward(InProcessTransport):
    """Sends each backward ``delay`` seconds late and records when it was sent."""

    def __init__(self, vendor, delay: float):
        super().__init__(vendor)
        self.delay, self.sent, self.charged = delay, [], []  # charged: (graph kept for it, batch cost, its cost)

    def backward(self, req):
        time.sleep(self.delay)
        self.sent.append(time.monotonic())
        session = self.vendor.session(self.session.session_id, self.session.token)
        shared = session._pending.shared
        self.charged.append((shared is not None and shared.rounds > 0, shared and shared.cost, session.pending_cost))
        return super().backward(req)


def _open(vendor: Vendor, config: SessionConfig, i: int, transport=None) -> Customer:
    return Customer.open(transport or InProcessTransport(vendor), config, PRIVACY,
                         TrainConfig(batch_size=8, noise_seed=i, seed=i,
                                     bottom="trained" if config.train_bottom else "frozen"))


def _state(vendor: Vendor, customer: Customer) -> dict[str, torch.Tensor]:
    info = customer.transport.session
    tuned = vendor.session(info.session_id, info.token).tuned
    state = {f"top.{n}": t.clone() for n, t in tuned.trainable_state().items()}
    if customer.session.train_bottom:
        state |= {f"bottom.{n}": p.detach().clone() for n, p in customer.bottom.named_parameters()}
    return state


def _together(customers: list[Customer], texts, labels, train_steps) -> list[dict[int, float]]:
    """Every customer's run, step by step in lock step (a barrier before each step), each on its own thread."""
    barrier, losses, errors = threading.Barrier(len(customers)), [None] * len(customers), []

    def run(k):
        try:
            losses[k] = {}
            for step in range(1, STEPS + 1):  # training_order counts steps from 1
                barrier.wait(timeout=60)
                losses[k] |= train_steps(customers[k], texts, labels, steps={step})
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(customers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return losses


@pytest.fixture(scope="module")
def solo(train_set, train_steps):
    """Each tenant trained alone on a vendor that batches nothing: its losses and final weights."""
    vendor = Vendor(batch_predict=0)
    out = []
    for i, config in enumerate(SPECS):
        customer = _open(vendor, config, i)
        out.append((train_steps(customer, train_set.texts, train_set.labels), _state(vendor, customer)))
    return out


def test_tenants_training_together_match_their_lone_runs(solo, train_set, train_steps):
    vendor = Vendor(batch_predict=64, batch_train=True)
    vendor.batcher.train_wait = 1.0  # a barrier lines the steps up; the wait only makes the test immune to a slow CI
    customers = [_open(vendor, config, i) for i, config in enumerate(SPECS)]
    sessions = [vendor.session(c.transport.session.session_id, c.transport.session.token) for c in customers]
    assert len({train_group_key(s) for s in sessions}) == 1 and train_group_key(sessions[0]) is not None
    losses = _together(customers, train_set.texts, train_set.labels, train_steps)
    # from step 2 on every tenant is known active, so the leader waits for all three (step 1 may start alone)
    assert vendor.batcher.train_batches >= STEPS - 1
    assert vendor.batcher.train_rows >= 3 * 8 * (STEPS - 1)
    for k, customer in enumerate(customers):
        want_losses, want_state = solo[k]
        assert losses[k].keys() == want_losses.keys()
        for step in want_losses:
            assert losses[k][step] == pytest.approx(want_losses[step], rel=1e-4, abs=1e-5)
        got = _state(vendor, customer)
        assert got.keys() == want_state.keys() and any(n.startswith("bottom.") for n in got) == (k == 1)
        for name, want in want_state.items():
            _assert_weights_match(got[name], want, f"tenant {k}, {name}")
    # the tenants really are different (seeds), so a batch that mixed their rows up could not pass the above
    assert any(not torch.allclose(solo[0][1][n], solo[2][1][n]) for n in solo[0][1])


def test_tenants_over_http_train_together_and_match_their_lone_runs(solo, train_set, loopback, train_steps):
    """The served path (``serve --batch-train``): two customers over HTTP on a loopback server share training
    forwards and end where they would have alone."""
    vendor = Vendor(batch_predict=64, batch_train=True)
    vendor.batcher.train_wait = 1.0
    server = loopback(create_app(vendor)).start()
    try:
        customers = [_open(vendor, SPECS[k], k, HttpTransport(server.url)) for k in (0, 2)]
        losses = _together(customers, train_set.texts, train_set.labels, train_steps)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()
    assert vendor.batcher.train_batches >= STEPS - 1
    assert f"splitpriv_train_batches {float(vendor.batcher.train_batches)}" in metrics
    assert f"splitpriv_train_batch_rows {float(vendor.batcher.train_rows)}" in metrics
    for got_losses, customer, k in zip(losses, customers, (0, 2)):
        assert got_losses == pytest.approx(solo[k][0], rel=1e-4, abs=1e-5)
        got = _state(vendor, customer)
        for name, want in solo[k][1].items():
            _assert_weights_match(got[name], want, f"tenant {k}, {name}")


def test_a_member_withholding_its_backward_delays_the_others_by_the_wait_only(solo, train_set, train_steps):
    """Tenant 1 sends every backward 1.5 s late: tenant 0's steps go on after ``backward_wait`` (0.2 s) without it,
    the batch graph is kept for the late one (charged at the batch's cost meanwhile), and both runs still equal their
    lone runs."""
    vendor = Vendor(batch_predict=64, batch_train=True)
    vendor.batcher.train_wait = 1.0
    slow = _SlowBackward(vendor, delay=1.5)
    customers = [_open(vendor, SPECS[0], 0), _open(vendor, SPECS[1], 1, slow)]
    done = []  # when tenant 0's steps returned
    original = customers[0].train_step

    def timed(*args, **kw):
        loss = original(*args, **kw)
        done.append(time.monotonic())
        return loss

    customers[0].train_step = timed
    losses = _together(customers, train_set.texts, train_set.labels, train_steps)
    assert vendor.batcher.train_batches >= 1
    assert len(done) == len(slow.sent) == STEPS
    # every step of the fast tenant ended before the slow tenant's backward of that step was even sent
    assert all(d < s for d, s in zip(done, slow.sent)), (done, slow.sent)
    # while the batch graph waited for the slow member, its pending forward was charged the whole batch's cost
    kept = [(cost, charged) for waited, cost, charged in slow.charged if waited]
    assert kept and all(cost == charged for cost, charged in kept), slow.charged
    for k, customer in enumerate(customers):
        for step, loss in solo[k][0].items():
            assert losses[k][step] == pytest.approx(loss, rel=1e-4, abs=1e-5)
        got = _state(vendor, customer)
        for name, want in solo[k][1].items():
            _assert_weights_match(got[name], want, f"tenant {k}, {name}")


def test_sessions_with_dropout_train_alone(train_set, train_steps):
    vendor = Vendor(batch_predict=64, batch_train=True)
    customers = [_open(vendor, _config(i, dropout=True), i) for i in range(2)]
    sessions = [vendor.session(c.transport.session.session_id, c.transport.session.token) for c in customers]
    assert train_group_key(sessions[0]) is None
    _together(customers, train_set.texts, train_set.labels, train_steps)
    assert vendor.batcher.train_batches == 0
    assert all(s.completed_step == STEPS for s in sessions)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_one_shared_round_gives_each_member_its_own_outputs_and_gradients(train_set, pack):
    """The core identity, one step, no optimizer in between: a batch of two tenants (one training its bottom) through
    :func:`run_training` and one joint :class:`SharedBackward` round gives each member the outputs and the gradients
    (its weights', and its representations') of its own top run alone. A second item of a session in the same batch
    gets the first one's reply (same step: a retry) or is refused as out of order (another step). Both layouts:
    packed (BERT-like encoders) and right-padded (every other family)."""
    vendor = Vendor(batch_predict=64, batch_train=True)
    customers = [_open(vendor, SPECS[0], 0), _open(vendor, SPECS[1], 1)]
    sessions = [vendor.session(c.transport.session.session_id, c.transport.session.token) for c in customers]
    enc = encode_texts(customers[0].tokenizer, train_set.texts[:8], 32)
    hidden, masks = [], []
    for k, c in enumerate(customers):
        ids, mask = collate(enc, torch.arange(4 * k, 4 * k + 4), customers[0].tokenizer.pad_token_id)
        hidden.append(c.outgoing(ids, mask).detach().float())
        masks.append(mask)
    items = [_Item(sessions[0], hidden[0].clone(), masks[0], 1), _Item(sessions[1], hidden[1].clone(), masks[1], 1),
             _Item(sessions[0], hidden[0].clone(), masks[0], 1), _Item(sessions[0], hidden[0].clone(), masks[0], 2)]
    with sessions[0].lock, sessions[1].lock:
        rows = run_training(BatchTop(sessions[0], pack=pack), items)
    assert rows == 8 and all(i.error is None for i in items[:3])
    assert items[2].result is items[0].result and sessions[0].pending_step == 1 == sessions[1].pending_step
    assert isinstance(items[3].error, OutOfOrder)

    grads = [torch.randn(items[k].result.outputs.shape, generator=torch.Generator().manual_seed(k)) for k in (0, 1)]
    pendings = [s._pending for s in sessions]
    threads = [threading.Thread(target=pendings[k].shared.backward, args=(sessions[k], pendings[k], grads[k]))
               for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert pendings[0].shared.rounds == 1  # both gradients went into one joint backward
    for k, s in enumerate(sessions):
        x = hidden[k].clone().requires_grad_(s.config.train_bottom)
        alone = s.tuned.module(x, masks[k])
        torch.testing.assert_close(items[k].result.outputs, alone.detach(), **TOL)
        leaves = s.tuned.parameters() + ([x] if s.config.train_bottom else [])
        want = torch.autograd.grad(alone, leaves, grads[k])
        got = [p.grad for p in s.tuned.parameters()] + ([pendings[k].hidden.grad] if s.config.train_bottom else [])
        assert len(got) == len(want) > 0 and (k == 0 or got[-1] is not None)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)
