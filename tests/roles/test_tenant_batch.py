"""Issue 18, scale up: predicts of different LoRA sessions run as one multi-tenant batch of the shared base top, and
each row's logits equal its session's unbatched predict (float32 tolerance), whatever else is in the batch."""

from __future__ import annotations

import threading

import pytest
import torch

from splitpriv.batching import collate, encode_texts
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract.errors import UnknownSession
from splitpriv.contract import PredictRequest, SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor.tenant_batch import BatchTop, _Item, _pack, group_key
from splitpriv.roles.vendor import Vendor
from splitpriv.transport import InProcessTransport

TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32: only the order of the sums differs between a batch and a lone forward
PRIVACY = PrivacyConfig(mechanism="dchi", eta=10.0)
PRIVATE_BOTTLENECK = PrivacyConfig(mechanism="dchi", eta=10.0, privatizer="bottleneck:r=16")


@pytest.fixture(scope="module")
def tenants(data_dir, train_steps):
    """One vendor, four trained LoRA sessions: three in one group (different seeds, hence weights and heads; one
    with a learned privatizer's up-projection is a group of its own), one with 3 labels (another group)."""
    from splitpriv.data import load_dataset

    train = load_dataset("sst2", "train", limit=32, seed=0)
    vendor = Vendor(batch_predict=64)
    specs = [(SessionConfig(n_bottom_layers=2, total_steps=2, seed=s, lr=1e-2), PRIVACY) for s in (0, 1, 2)]
    specs.append((SessionConfig(n_bottom_layers=2, total_steps=2, seed=3, lr=1e-2,
                                privatizer=PRIVATE_BOTTLENECK.privatizer), PRIVATE_BOTTLENECK))
    specs.append((SessionConfig(n_bottom_layers=2, total_steps=2, seed=4, lr=1e-2, num_labels=3), PRIVACY))
    customers = []
    for i, (session, privacy) in enumerate(specs):
        customer = Customer.open(InProcessTransport(vendor), session, privacy, TrainConfig(batch_size=16, noise_seed=i))
        labels = train.labels if session.num_labels == 2 else [(y + i) % 3 for i, y in enumerate(train.labels)]
        train_steps(customer, train.texts, labels)
        customers.append(customer)
    texts = load_dataset("sst2", "validation", limit=24, seed=0).texts
    return vendor, customers, texts


def _request(customer: Customer, texts: list[str]) -> PredictRequest:
    enc = encode_texts(customer.tokenizer, texts, 64)
    ids, mask = collate(enc, torch.arange(len(enc)), customer.tokenizer.pad_token_id)
    return PredictRequest(session_id=customer.transport.session.session_id, hidden=customer.outgoing(ids, mask),
                          attention_mask=mask)


def _session(vendor: Vendor, customer: Customer):
    info = customer.transport.session
    return vendor.session(info.session_id, info.token), info.token


def test_a_batch_of_tenants_equals_each_tenants_lone_predict(tenants):
    vendor, customers, texts = tenants
    sessions = [_session(vendor, c)[0] for c in customers]
    keys = [group_key(s) for s in sessions]
    assert keys[0] == keys[1] == keys[2] and len({keys[0], keys[3], keys[4]}) == 3 and None not in keys
    # rows of different lengths and batch sizes, two requests from one session, in one batch
    requests = [_request(customers[0], texts[0:3]), _request(customers[1], texts[3:4]),
                _request(customers[2], texts[4:9]), _request(customers[0], texts[9:10])]
    holes = _request(customers[1], texts[10:12])  # a caller's own mask with holes: its first token masked out
    holes.attention_mask[0, 0] = 0
    requests.append(holes)
    owners = [sessions[0], sessions[1], sessions[2], sessions[0], sessions[1]]
    alone = [s.predict(r).outputs for s, r in zip(owners, requests)]
    assert not torch.allclose(alone[0], sessions[1].predict(requests[0]).outputs, **TOL)  # the tenants do differ
    top = BatchTop(sessions[0])
    items = [_Item(s, r.hidden.float(), r.attention_mask.long()) for s, r in zip(owners, requests)]
    lengths = [r.hidden.shape[1] for r in requests for _ in range(r.hidden.shape[0])]
    assert top.packs and _pack(lengths)[1] < len(lengths)  # BERT packs: fewer sequences than rows
    with torch.no_grad():
        batched = top(items)
    for got, want in zip(batched, alone):
        torch.testing.assert_close(got, want, **TOL)


def test_packing_places_every_row_once_within_the_longest_rows_length():
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 40))]
        places, n_seq, capacity = _pack(lengths)
        assert capacity == max(lengths) and n_seq <= len(lengths)
        used = [[0] * capacity for _ in range(n_seq)]
        for (seq, at), length in zip(places, lengths):
            assert at + length <= capacity
            for t in range(at, at + length):
                used[seq][t] += 1
        assert max(max(u) for u in used) == 1  # no two rows share a position
        # first-fit decreasing never opens a sequence a later one could have shared: any two are fuller than one
        fill = sorted(sum(u) for u in used)
        assert n_seq == 1 or fill[0] + fill[1] > capacity


def test_concurrent_predicts_are_batched_and_each_gets_its_own_answer(tenants):
    vendor, customers, texts = tenants
    jobs = [(c, texts[i % len(texts):i % len(texts) + 1 + i % 3]) for i, c in enumerate(customers * 4)]
    requests = [(_request(c, t), _session(vendor, c)) for c, t in jobs]
    expected = [session.predict(r).outputs for r, (session, _) in requests]
    before = (vendor.batcher.batches, vendor.batcher.rows)
    results, barrier = [None] * len(requests), threading.Barrier(len(requests))

    def call(i):
        request, (_, token) = requests[i]
        barrier.wait()
        results[i] = vendor.predict(request, token).outputs

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, **TOL)
    batches, rows = vendor.batcher.batches - before[0], vendor.batcher.rows - before[1]
    assert rows == sum(r.hidden.shape[0] for r, _ in requests)
    assert batches < len(requests)  # 20 requests in 5 groups arriving together: at least one batch held several


def test_a_closed_session_is_refused_and_the_others_still_batch(tenants):
    vendor, customers, texts = tenants
    extra = Customer.open(InProcessTransport(vendor), SessionConfig(n_bottom_layers=2, total_steps=2, seed=9), PRIVACY,
                          TrainConfig(batch_size=16, noise_seed=9))
    request = _request(extra, texts[:2])
    session, token = _session(vendor, extra)
    vendor.predict(request, token)
    vendor.close(session.session_id, token)
    with pytest.raises(UnknownSession):
        vendor.predict(request, token)
    item = _Item(session, request.hidden.float(), request.attention_mask.long())  # closed while queued in a batch
    other, _ = _session(vendor, customers[0])
    again = _request(customers[0], texts[:2])
    mate = _Item(other, again.hidden.float(), again.attention_mask.long())
    vendor.batcher._run(BatchTop(other), [item, mate])
    assert isinstance(item.error, UnknownSession) and item.result is None
    torch.testing.assert_close(mate.result.outputs, other.predict(again).outputs, **TOL)


def test_decoder_sessions_batch_with_rotary_positions_and_left_padding(tiny_lm_dir):
    """A rotary decoder (tiny Llama, classification at the last real token): left-padded requests, right-padded
    again to the batch's length, give each session's own logits (its LoRA deltas and head drawn at random)."""
    vendor = Vendor(str(tiny_lm_dir))
    sessions = []
    for seed in (0, 1, 2):
        info = vendor.open_session(SessionConfig(n_bottom_layers=1, seed=seed))
        session = vendor.session(info.session_id, info.token)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in session.tuned.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sessions.append(session)
    g = torch.Generator().manual_seed(7)
    items = []
    for session, (batch, length, pad) in zip(sessions * 2, [(2, 6, 2), (1, 9, 0), (3, 4, 1), (1, 3, 0), (2, 7, 3),
                                                            (1, 5, 4)]):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, :pad] = 0  # left padding in the first row
        items.append(_Item(session, torch.randn(batch, length, session.d_model, generator=g), mask))
    with torch.no_grad():
        alone = [i.session.tuned.module.eval()(i.hidden, i.mask) for i in items]
        batched = BatchTop(sessions[0])(items)
    assert len({group_key(s) for s in sessions}) == 1
    for got, want in zip(batched, alone):
        torch.testing.assert_close(got, want, **TOL)


def test_batch_groups_are_bounded(tenants, monkeypatch):
    """Sessions with ever new LoRA shapes cannot grow the vendor's batch tops: the least recently used idle go."""
    import splitpriv.roles.vendor.tenant_batch as tb

    vendor, customers, texts = tenants
    monkeypatch.setattr(tb, "MAX_GROUPS", 2)
    request = _request(customers[0], texts[:1])
    for alpha in (8.0, 9.0, 10.0):
        info = vendor.open_session(SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "alpha": alpha}))
        vendor.predict(PredictRequest(info.session_id, request.hidden, request.attention_mask), info.token)
        vendor.close(info.session_id, info.token)
    assert len(vendor.batcher._groups) == 2
