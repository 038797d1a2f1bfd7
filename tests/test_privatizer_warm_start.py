"""The customer's warm start of its privatizer at home: on its labels, with noise in the loop, nothing sent."""

from __future__ import annotations

import pytest
import torch

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.protocol import SessionConfig
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
])
def test_bad_warm_start_settings_are_one_clear_error(kw, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**kw).validate(PrivacyConfig("dchi", eta=8, privatizer=SPEC))


def test_warm_start_without_a_privatizer_is_refused():
    with pytest.raises(ValueError, match="needs a privatizer"):
        TrainConfig(privatizer_warm_start=1).validate(PrivacyConfig("dchi", eta=8))
