"""A learned privatizer in causal-LM sessions on a tiny random Llama (SmolLM2's tokenizer): r-wide vectors go up in
training and in generation, private training lowers the loss and trains both the vendor half (and, with a trained
bottom, the customer half), private greedy generation is the local split's and is the same token for token in
process and over HTTP (fixed noise seed), and the vendor refuses, with one 4xx naming the problem, a tensor of
another width, a privatizer the model cannot serve, k + j leaving it no block, generation in the middle of a
training step, and a pre-trained privatizer folder saved for another split."""

import shutil

import pytest
import torch

from splitpriv import load_model
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import BackwardRequest, DecodeRequest, ForwardRequest, PredictRequest, SessionConfig
from splitpriv.contract.errors import OutOfOrder, status_of
from splitpriv.parts import split_model
from splitpriv.parts.privatizer import save_privatizer
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.tasks.causal_lm import local_generate
from splitpriv.transport import HttpTransport, InProcessTransport

R = 8
SPEC = {"name": "bottleneck", "r": R, "clip": 1.0, "normalize": False}
NOISY = PrivacyConfig("gaussian", sigma=0.05, privatizer=SPEC)
def _session(**kw):
    return SessionConfig(**{"task": "causal-lm", "n_bottom_layers": 1, "n_tail_layers": 1, "total_steps": 6,
                            "lr": 1e-2, "privatizer": SPEC, **kw})


def _state(lm_vendor, transport):
    return lm_vendor.session(transport.session.session_id, transport.session.token)


@pytest.mark.parametrize("bottom", ["frozen", "trained"])
def test_private_training_sends_r_wide_vectors_and_lowers_the_loss(lm_vendor, lm_examples, bottom):
    seen = []
    transport = InProcessTransport(lm_vendor, tap=lambda direction, msg: seen.append(msg))
    train = TrainConfig(batch_size=len(lm_examples), epochs=6, bottom=bottom, bottom_lr=1e-2, noise_seed=0)
    customer = Customer.open(transport, _session(train_bottom=bottom == "trained"), NOISY, train)
    assert transport.session.d_model == R and customer.bottom.privatizer.privatizer_config == SPEC
    up = _state(lm_vendor, transport).tuned.module.privatizer_up
    before = (up.weight.detach().clone(), customer.bottom.privatizer.proj.weight.detach().clone())
    losses = customer.fit(lm_examples, progress=False)["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses
    assert not torch.equal(before[0], up.weight)  # the vendor half trains with the middle
    assert torch.equal(before[1], customer.bottom.privatizer.proj.weight) == (bottom == "frozen")
    widths = {(m.kind, name): getattr(m, name).shape[-1] for m in seen
              for name in ("hidden", "outputs", "grad_outputs", "grad_hidden") if getattr(m, name, None) is not None}
    expected = {("forward", "hidden"): R, ("outputs", "outputs"): 32, ("backward", "grad_outputs"): 32}
    assert widths == {**expected, **({("backward_result", "grad_hidden"): R} if bottom == "trained" else {})}


def test_private_generation_is_the_local_split_and_the_same_over_http(lm_vendor, lm_url, tiny_lm_dir, lm_examples):
    prompt = lm_examples[0].prompt_ids
    model, _ = load_model(str(tiny_lm_dir), task="causal-lm")
    reference = local_generate(split_model(model, 1, 1, privatizer=SPEC, privatizer_seed=0), prompt, 6, stop_ids=())
    train = TrainConfig(batch_size=4, noise_seed=0)
    trainer = Customer.open(InProcessTransport(lm_vendor), _session(), PrivacyConfig(privatizer=SPEC), train)
    info = trainer.transport.session

    def attached(transport, privacy):
        transport.attach(info)
        return Customer(transport, _session(), privacy, TrainConfig(batch_size=4, noise_seed=7))

    http = HttpTransport(lm_url)
    clean = [attached(t, PrivacyConfig(privatizer=SPEC)) for t in (InProcessTransport(lm_vendor), http)]
    assert [c.generate(prompt, 6, stop_ids=()) for c in clean] == [reference, reference]
    sent = http.bytes_sent
    clean[1].generate(prompt, 3, stop_ids=())
    per_token = (http.bytes_sent - sent - (len(prompt) - 1) * 4 * R) / 3
    assert per_token < 4 * R + 400  # one float32 r-vector (+ a small header) per token
    trainer.fit(lm_examples[:8], progress=False)  # two steps: the up-projection and LoRA move
    noisy = [attached(t, NOISY) for t in (InProcessTransport(lm_vendor), HttpTransport(lm_url))]
    tokens = [c.generate(prompt, 8, stop_ids=()) for c in noisy]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 8
    http.close()


def test_a_tensor_of_another_width_is_a_4xx(lm_vendor, lm_url, http):
    transport = HttpTransport(lm_url)
    transport.open_session(_session())
    sid, token = transport.session.session_id, transport.session.token
    one = torch.ones(1, 3, dtype=torch.long)
    for path, message in [("forward", ForwardRequest(sid, 1, torch.zeros(1, 3, 32), one)),
                          ("decode", DecodeRequest(sid, torch.zeros(1, 3, 32), one, reset=True)),
                          ("predict", PredictRequest(sid, torch.zeros(1, 3, R + 1), one))]:
        got = http.expect(http.raw(lm_url, f"/v1/sessions/{sid}/{path}", message.to_bytes(), token), 400,
                          f"[batch, tokens, {R}]")
        assert "got [1, 3," in got
    transport.close()


@pytest.mark.parametrize("config, words", [
    (dict(privatizer={"name": "bottleneck", "r": 64}), ["bottleneck r=64", "above the model width d=32"]),
    (dict(privatizer={"name": "prototype", "K": 20000}), ["K=20000 is above the 16384 tokens"]),
    (dict(privatizer={"name": "pac", "budget": 1, "r": 40}), ["pac r=40", "above the model width d=32"]),
    (dict(n_bottom_layers=2, n_tail_layers=2), ["leave the vendor no block", "k + j must be below 4"]),
    (dict(n_bottom_layers=3, n_tail_layers=2), ["k + j at most 4"]),
    (dict(privatizer={"name": "bottleneck", "r": 0}), ["positive integer"]),
])
def test_a_session_the_model_cannot_serve_is_a_4xx(lm_url, http, config, words):
    import json

    body = {"task": "causal-lm", "n_bottom_layers": 1, "n_tail_layers": 1, "total_steps": 1, "privatizer": SPEC,
            **config}
    answer = http.raw(lm_url, "/v1/sessions", json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    for word in words:
        assert word in answer.json()["error"], answer.json()


@pytest.mark.parametrize("where", ["inprocess", "http"])
def test_generation_during_a_training_step_is_refused(lm_vendor, lm_url, lm_examples, where):
    transport = InProcessTransport(lm_vendor) if where == "inprocess" else HttpTransport(lm_url)
    customer = Customer.open(transport, _session(), NOISY, TrainConfig(batch_size=4, noise_seed=0))
    sid = transport.session.session_id
    ids, mask = torch.tensor([lm_examples[2].ids]), torch.ones(1, len(lm_examples[2].ids), dtype=torch.long)
    outputs = transport.forward(ForwardRequest(sid, 1, customer.outgoing(ids, mask), mask))
    with pytest.raises(OutOfOrder, match="is training: the forward of step 1 awaits its backward") as caught:
        customer.generate([5, 6, 7], 2)
    assert status_of(caught.value) == 409  # the message holds a random session id: "500" may occur in it
    transport.backward(BackwardRequest(sid, 1, torch.zeros_like(outputs.outputs)))
    assert len(customer.generate([5, 6, 7], 2, stop_ids=())) == 2  # between steps it generates
    transport.close()


def test_a_pretrained_privatizer_folder_serves_its_split_only(tiny_lm_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, folder)
    model, _ = load_model(str(folder), task="causal-lm")
    parts = split_model(model, 1, 1, privatizer=SPEC)
    with torch.no_grad():
        parts.bottom.privatizer.proj.weight.mul_(-1)  # not what a fresh fit gives
    save_privatizer(parts, folder)
    vendor = Vendor(str(folder))
    customer = Customer.open(InProcessTransport(vendor), _session(), NOISY, TrainConfig(noise_seed=0))
    assert torch.equal(customer.bottom.privatizer.proj.weight, parts.bottom.privatizer.proj.weight)
    assert torch.equal(_state(vendor, customer.transport).parts.top.privatizer_up.weight,
                       parts.top.privatizer_up.weight)
    for session, word in [(_session(n_bottom_layers=2), "n_bottom_layers: trained for 1"),
                          (_session(privatizer={**SPEC, "r": 4}), "privatizer: trained for")]:
        with pytest.raises(ValueError, match=f"trained for another split.*{word}"):
            vendor.open_session(session)
    with pytest.raises(ValueError, match="open the session with it"):
        vendor.open_session(_session(privatizer=None))
    assert vendor.open_sessions == 1
