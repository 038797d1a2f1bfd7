"""The customer's warm start of its privatizer at home: on its labels, with noise in the loop, nothing sent."""

from __future__ import annotations

import pytest
import torch

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.transport import InProcessTransport

SPEC = {"name": "bottleneck", "r": 4, "clip": 1.0, "normalize": False}


def test_warm_start_trains_only_the_projection_at_home_then_training_sends_as_usual(data_dir):
    from splitpriv.data import load_dataset

    data = load_dataset("sst2", "train", limit=256, seed=0)
    vendor = Vendor()
    privacy = PrivacyConfig("dchi", eta=8, privatizer=SPEC)
    steps = 256 // 32
    train = TrainConfig(batch_size=32, seed=0, noise_seed=0, privatizer_warm_start=3, privatizer_lr=0.03)
    transport = InProcessTransport(vendor)
    customer = Customer.open(transport, SessionConfig(total_steps=steps, privatizer=SPEC), privacy, train)
    frozen = {n: p.detach().clone() for n, p in customer.bottom.named_parameters() if "privatizer" not in n}
    projection = customer.bottom.privatizer.proj.weight.detach().clone()
    sent = []
    transport.tap = lambda direction, message: sent.append(direction)
    history = customer.fit(data.texts, data.labels, progress=False)
    # the warm start is 3 local epochs; the wire carries exactly the split training's steps (forward + backward)
    assert history["warm_start_steps"] == 3 * steps
    assert sent.count("to_vendor") == 2 * steps
    # it learned the task locally (the read-out over noisy tokens) and moved only the projection
    assert history["warm_start_loss_last"] < history["warm_start_loss_first"] - 0.02
    assert not torch.equal(projection, customer.bottom.privatizer.proj.weight)
    assert all(torch.equal(p, frozen[n]) for n, p in customer.bottom.named_parameters() if n in frozen)
    assert not any(p.requires_grad for p in customer.bottom.parameters()), "a frozen bottom stays frozen"
    # the clip still bounds every token after training: the guarantee holds for any weights
    ids = customer.tokenizer(data.texts[:8], padding=True, return_tensors="pt")
    u = customer.bottom(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    assert bool((u.norm(dim=-1) <= 1.0 + 1e-5).all())


@pytest.mark.parametrize("kw, words", [
    ({"privatizer_warm_start": -1}, "privatizer_warm_start must be a number of epochs"),
    ({"privatizer_warm_start": 2.5}, "privatizer_warm_start must be a number of epochs"),
    ({"privatizer_lr": 0.0}, "privatizer_lr"),
    ({"warm_start_blocks": True}, "warm_start_blocks .* needs privatizer_warm_start >= 1"),
    ({"privatizer_warm_start": 1, "warm_start_blocks": "yes"}, "warm_start_blocks must be true or false"),
])
def test_bad_warm_start_settings_are_one_clear_error(kw, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**kw).validate(PrivacyConfig("dchi", eta=8, privatizer=SPEC))


def test_warm_start_without_a_privatizer_is_refused():
    with pytest.raises(ValueError, match="needs a privatizer"):
        TrainConfig(privatizer_warm_start=1).validate(PrivacyConfig("dchi", eta=8))


def test_warm_start_can_train_the_bottoms_blocks_at_home_not_its_embeddings(data_dir):
    """``warm_start_blocks``: the k blocks learn beside the projection (at ``bottom_lr``), the embeddings stay as
    shipped, everything is frozen again before split training; at k = 0 there are no blocks to train."""
    from splitpriv.data import load_dataset

    data = load_dataset("sst2", "train", limit=64, seed=0)
    privacy = PrivacyConfig("dchi", eta=8, privatizer=SPEC)
    train = TrainConfig(batch_size=32, seed=0, noise_seed=0, privatizer_warm_start=1, warm_start_blocks=True,
                        bottom_lr=1e-3)
    customer = Customer.open(InProcessTransport(Vendor()), SessionConfig(n_bottom_layers=1, total_steps=2,
                                                                         privatizer=SPEC), privacy, train)
    before = {n: p.detach().clone() for n, p in customer.bottom.named_parameters()}
    history = customer.fit(data.texts, data.labels, progress=False)
    assert history["warm_start_steps"] == 2
    moved = {n for n, p in customer.bottom.named_parameters() if not torch.equal(p, before[n])}
    assert any(".encoder.layer.0." in n for n in moved) and any("privatizer" in n for n in moved)
    assert not any("embeddings" in n for n in moved), sorted(moved)
    assert not any(p.requires_grad for p in customer.bottom.parameters())
    flat = Customer.open(InProcessTransport(Vendor()), SessionConfig(total_steps=2, privatizer=SPEC), privacy, train)
    with pytest.raises(ValueError, match="needs a bottom with blocks"):
        flat.fit(data.texts, data.labels, progress=False)


def test_the_reference_of_a_run_that_trains_its_blocks_at_home_tunes_every_block():
    """A private run whose customer trained its k blocks is compared with centralized LoRA over the whole model,
    not with one whose first k blocks stay frozen; other runs keep their k (their records stay comparable)."""
    from dataclasses import replace

    from splitpriv.runs.run import RunConfig, reference_config

    privacy = PrivacyConfig("dchi", eta=4, privatizer=SPEC)
    plain = RunConfig(bottom_layers=2, privacy=privacy, train=TrainConfig(privatizer_warm_start=3))
    home = replace(plain, train=TrainConfig(privatizer_warm_start=3, warm_start_blocks=True, bottom_lr=1e-4))
    for config, k in ((plain, 2), (home, 0)):
        ref = reference_config(config)
        assert ref.centralized and ref.bottom_layers == k
        assert ref.privacy.mechanism == "none" and ref.privacy.privatizer is None
        assert ref.train == TrainConfig(), ref.train
