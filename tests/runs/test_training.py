"""Split fine-tuning and private inference, in process, against the unsplit baseline and autograd."""

import json

import pytest
import torch
import torch.nn.functional as F

from splitpriv.batching import collate, encode_texts
from splitpriv.runs.centralized import CentralizedTrainer
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.data import load_dataset
from splitpriv.contract import BackwardRequest, ForwardRequest, PredictRequest, SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.transport import InProcessTransport


@pytest.fixture(scope="module")
def sst2_slice(data_dir):
    return load_dataset("sst2", "train", limit=48, seed=0)


@pytest.fixture(scope="module")
def vendor():
    return Vendor()


def _session(n_steps, **kw):
    return SessionConfig(total_steps=n_steps, **kw)


@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter", "full"])
@pytest.mark.parametrize("bottom", ["frozen", "trained"])
def test_split_without_noise_equals_centralized(vendor, sst2_slice, method, bottom):
    """Same config and seed: the protocol (gradients across the wire, two optimizers) is plain training."""
    session = _session(3, n_bottom_layers=2, tuning={"method": method}, train_bottom=bottom == "trained")
    train = TrainConfig(batch_size=16, bottom=bottom, noise_seed=0)
    customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(), train)
    split_losses = customer.fit(sst2_slice.texts, sst2_slice.labels, progress=False)["losses"]
    central_losses = CentralizedTrainer(session, train).fit(sst2_slice.texts, sst2_slice.labels, progress=False)["losses"]
    assert len(split_losses) == 3
    torch.testing.assert_close(torch.tensor(split_losses), torch.tensor(central_losses), atol=1e-5, rtol=0)
    assert len(set(split_losses)) == 3, "the model must actually train"


def test_customer_held_head_equals_centralized(vendor, sst2_slice):
    session = _session(3, n_bottom_layers=1, head="customer", dropout=False)
    train = TrainConfig(batch_size=16, noise_seed=0)
    customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(), train)
    assert customer.head is not None
    split_losses = customer.fit(sst2_slice.texts, sst2_slice.labels, progress=False)["losses"]
    central = CentralizedTrainer(session, train).fit(sst2_slice.texts, sst2_slice.labels, progress=False)["losses"]
    torch.testing.assert_close(torch.tensor(split_losses), torch.tensor(central), atol=1e-5, rtol=0)


def test_vendor_denoising_is_the_identity_without_noise(vendor, sst2_slice):
    """Noiseless embedding outputs are their own nearest candidates: projecting them changes nothing."""
    train = TrainConfig(batch_size=16, noise_seed=0)
    losses = {}
    for denoise in ("none", "nn"):
        customer = Customer.open(InProcessTransport(vendor), _session(3, denoise=denoise), PrivacyConfig(), train)
        losses[denoise] = customer.fit(sst2_slice.texts, sst2_slice.labels, progress=False)["losses"]
    torch.testing.assert_close(torch.tensor(losses["nn"]), torch.tensor(losses["none"]), atol=1e-5, rtol=0)


def test_vendor_denoising_feeds_the_top_token_embeddings(minilm, sst2_slice):
    """Under d_chi noise every real position the top sees is exactly some token's embedding-layer output at that
    position, padding is untouched, and the projection is the nearest-neighbour attack's guess."""
    from splitpriv.attacks import observe
    from splitpriv.attacks.nearest import CandidateSpace
    from splitpriv.privacy import DChi
    from splitpriv.roles.vendor.denoise import TokenProjection
    from splitpriv.parts import split_model

    model, tok = minilm
    bottom = split_model(model, 0).bottom
    z, mask, _ = observe(bottom, tok, DChi(10.0), sst2_slice.texts[:8], generator=torch.Generator().manual_seed(0))
    projected = TokenProjection(bottom, tok)(z, mask)
    real = mask.bool()
    rows, cols = real.nonzero(as_tuple=True)
    d2 = CandidateSpace(bottom, tok).sqdist(projected[rows, cols], cols)
    assert float(d2.min(1).values.max()) < 1e-3, "every projected vector is a candidate embedding"
    assert torch.equal(projected[~real], z[~real])
    assert not torch.allclose(projected[real], z[real])


def test_map_denoising_is_the_map_attack(minilm, sst2_slice, data_dir):
    """The MAP projection feeds the top the embedding of exactly the token the MAP attack guesses, which at η = 10
    is right more often than the nearest neighbour (the prior breaks ties the noise makes)."""
    from splitpriv.attacks import observe
    from splitpriv.attacks.base import AttackerKnowledge
    from splitpriv.attacks.nearest import MAPInversion, NearestNeighbour
    from splitpriv.data import load_public_text
    from splitpriv.privacy import DChi, Identity
    from splitpriv.roles.vendor.denoise import TokenProjection
    from splitpriv.parts import split_model

    model, tok = minilm
    bottom = split_model(model, 0).bottom
    z, mask, ids = observe(bottom, tok, DChi(10.0), sst2_slice.texts[:16], generator=torch.Generator().manual_seed(0))
    projection = TokenProjection(bottom, tok, method="map", declared_noise={"name": "dchi", "eta": 10.0})
    public = [s for split in ("valid", "test") for s in load_public_text("wikitext2", split)]
    guess = MAPInversion().fit(AttackerKnowledge(bottom, tok, DChi(10.0), public_texts=public)).invert(z, mask)
    with torch.no_grad():
        expected = bottom.embed(input_ids=guess, token_type_ids=torch.zeros_like(guess))
    real = mask.bool()
    torch.testing.assert_close(projection(z, mask)[real], expected[real])
    nn_guess = NearestNeighbour().fit(AttackerKnowledge(bottom, tok, Identity())).invert(z, mask)
    assert (guess[real] == ids[real]).float().mean() > (nn_guess[real] == ids[real]).float().mean()


def test_trained_bottom_gradients_equal_autograd_through_unsplit_model(vendor, minilm, sst2_slice):
    model, tokenizer = minilm
    k = 2
    session = _session(1, n_bottom_layers=k, train_bottom=True, dropout=False)
    customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(), TrainConfig(bottom="trained"))
    enc = encode_texts(tokenizer, sst2_slice.texts[:8], 64)
    ids, mask = collate(enc, torch.arange(8), tokenizer.pad_token_id)
    labels = torch.tensor(sst2_slice.labels[:8])

    # split: customer bottom → wire → vendor top → loss at home → gradients back → bottom backward
    hidden = customer.bottom(input_ids=ids, attention_mask=mask)
    z = customer.privatize(hidden.detach(), ids, mask)
    sid = customer.transport.session.session_id
    out = customer.transport.forward(ForwardRequest(session_id=sid, step=1, hidden=z, attention_mask=mask)).outputs
    out.requires_grad_(True)
    F.cross_entropy(out, labels).backward()
    grad_z = customer.transport.backward(BackwardRequest(session_id=sid, step=1, grad_outputs=out.grad)).grad_hidden
    hidden.backward(grad_z * mask.unsqueeze(-1))
    split_grads = {n: p.grad for n, p in customer.bottom.named_parameters()}

    # reference: plain autograd through the unsplit Hugging Face model (LoRA starts at B = 0, so the top is the base)
    model.zero_grad(set_to_none=True)
    model.eval()
    F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
    reference = dict(model.named_parameters())
    assert split_grads and all(g is not None for g in split_grads.values())
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, reference[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    model.zero_grad(set_to_none=True)


def test_vendor_never_receives_ids_text_or_labels(vendor, sst2_slice):
    seen = []
    transport = InProcessTransport(vendor, tap=lambda direction, msg: seen.append((direction, msg)))
    session = _session(3, n_bottom_layers=0)
    privacy = PrivacyConfig(mechanism="dchi", eta=10.0)
    customer = Customer.open(transport, session, privacy, TrainConfig(batch_size=16, noise_seed=1))
    customer.fit(sst2_slice.texts, sst2_slice.labels, progress=False)
    customer.predict(sst2_slice.texts[:5])
    to_vendor = [m for d, m in seen if d == "to_vendor"]
    assert {type(m) for m in to_vendor} == {ForwardRequest, BackwardRequest, PredictRequest}
    vocab = customer.bottom.get_submodule("bert.embeddings.word_embeddings").weight
    for msg in to_vendor:
        if isinstance(msg, BackwardRequest):
            assert msg.grad_outputs.dtype == torch.float32 and msg.grad_outputs.shape[1] == 2
            continue
        assert msg.hidden.dtype == torch.float32 and msg.hidden.shape[-1] == 384
        assert set(msg.attention_mask.unique().tolist()) <= {0, 1}
        real = msg.hidden[msg.attention_mask.bool()]
        # with d_chi noise of expected norm d/eta = 38.4 no sent vector is a clean embedding-layer output
        assert torch.cdist(real, vocab[:2000]).min() > 5.0
        assert torch.all(msg.hidden[~msg.attention_mask.bool()] == 0), "padding positions must be zeroed"


def test_noise_once_resends_identical_representations(vendor, sst2_slice):
    texts, labels = sst2_slice.texts[:16], sst2_slice.labels[:16]

    def sent(noise):
        got = []
        transport = InProcessTransport(vendor, tap=lambda d, m: got.append(m) if isinstance(m, ForwardRequest) else None)
        privacy = PrivacyConfig(mechanism="dchi", eta=10.0, noise=noise)
        customer = Customer.open(transport, _session(2), privacy, TrainConfig(batch_size=16, epochs=2, noise_seed=3))
        customer.fit(texts, labels, progress=False)
        return got

    def per_sample(msgs):
        # one batch per epoch: rows are a permutation of the 16 samples; key each row by its (noise-free) length
        # and sort the rows' norms to compare epochs regardless of order
        return [sorted(m.hidden.norm(dim=(1, 2)).tolist()) for m in msgs]

    once = per_sample(sent("once"))
    fresh = per_sample(sent("per-step"))
    assert once[0] == once[1], "noise once: the vendor sees the very same vectors every epoch"
    assert fresh[0] != fresh[1], "per-step: fresh noise every epoch"


def test_private_inference_and_cti_are_label_free(vendor, sst2_slice):
    privacy = PrivacyConfig(mechanism="dchi", eta=20.0, cti=True, cti_fraction=0.01)
    customer = Customer.open(InProcessTransport(vendor), _session(3), privacy, TrainConfig(batch_size=16, noise_seed=2))
    customer.fit(sst2_slice.texts, sst2_slice.labels, progress=False)
    assert customer.cti is not None and len(customer.cti.token_ids) > 0
    logits = customer.predict_logits(["a gorgeous film", "a dull film"])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    result = customer.evaluate(sst2_slice.texts[:16], sst2_slice.labels[:16], progress=False)
    assert 0 <= result["accuracy"] <= 1 and result["n_eval"] == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tuning": {"method": "prefix"}}, "unknown tuning method 'prefix'"),
        ({"n_bottom_layers": 7}, "n_bottom_layers=7 is out of range"),
        ({"head": "both"}, "head must be one of"),
        ({"denoise": "median"}, "denoise must be one of"),
        ({"denoise": "nn", "n_bottom_layers": 1}, "needs n_bottom_layers=0 and a frozen bottom"),
        ({"denoise": "nn", "train_bottom": True}, "needs n_bottom_layers=0 and a frozen bottom"),
        ({"denoise": "map"}, "denoise='map' needs declared_noise"),
        ({"denoise": "map", "declared_noise": {"name": "dchi"}}, "eta"),
        ({"denoise": "map", "declared_noise": {"name": "rot13", "eta": 1}}, "unknown mechanism 'rot13'"),
    ],
)
def test_bad_session_config(vendor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vendor.open_session(SessionConfig(**kwargs))


def test_bad_privacy_and_train_config():
    with pytest.raises(ValueError, match="needs --eta"):
        PrivacyConfig(mechanism="dchi").validate()
    with pytest.raises(ValueError, match="eta must be finite"):
        PrivacyConfig(mechanism="dchi", eta=float("nan")).validate()
    with pytest.raises(ValueError, match="noise 'once' needs a frozen bottom"):
        TrainConfig(bottom="trained").validate(PrivacyConfig(mechanism="dchi", eta=5.0, noise="once"))
    with pytest.raises(ValueError, match="unknown mechanism"):
        PrivacyConfig(mechanism="rot13").validate()
    from splitpriv.runs.run import RunConfig

    with pytest.raises(ValueError, match="--denoise map .* needs a --mechanism"):
        RunConfig(denoise="map").validate()


def test_cli_train_writes_metrics_and_a_loadable_peft_adapter(tmp_path, minilm, data_dir):
    from peft import PeftModel
    from typer.testing import CliRunner

    from splitpriv.cli import app
    from splitpriv.models import load_model

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--dataset", "sst2", "--train-limit", "32", "--eval-limit", "16",
                                      "--bottom-layers", "2", "--mechanism", "dchi", "--eta", "20", "--noise-seed", "0",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "config", "seed", "versions", "wall_time_s", "train_samples_per_s"):
        assert key in metrics
    assert metrics["config"]["privacy"]["mechanism"] == {"name": "dchi", "eta": 20.0}
    assert (out / "customer" / "bottom.safetensors").is_file() and (out / "customer" / "tokenizer.json").is_file()
    adapter = out / "vendor"
    assert (adapter / "adapter_config.json").is_file()
    base, _ = load_model()
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    lora = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert lora and all(".layer.0." not in n and ".layer.1." not in n for n in lora), "LoRA only on the top"


def test_cli_reports_bad_input_without_traceback(data_dir):
    from typer.testing import CliRunner

    from splitpriv.cli import app

    runner = CliRunner()
    for args, message in [
        (["train", "--mechanism", "dchi"], "needs --eta"),
        (["train", "--dataset", "nope"], "nope"),
        (["train", "--bottom", "trained", "--noise", "once", "--mechanism", "dchi", "--eta", "5"], "frozen bottom"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_noise_is_drawn_once_per_sentence_by_default_when_training_repeats_it():
    dchi = PrivacyConfig(mechanism="dchi", eta=10.0)
    assert dchi.for_training(TrainConfig(epochs=1)).noise == "per-step"
    assert dchi.for_training(TrainConfig(epochs=3)).noise == "once"
    with pytest.warns(UserWarning, match="independent noisy looks"):
        assert PrivacyConfig(mechanism="dchi", eta=10.0, noise="per-step").for_training(
            TrainConfig(epochs=2)).noise == "per-step"
    with pytest.warns(UserWarning, match="independent noisy looks"):  # a trained bottom cannot re-send old vectors
        assert dchi.for_training(TrainConfig(epochs=2, bottom="trained")).noise == "per-step"
    from splitpriv.runs.run import RunConfig

    assert RunConfig(privacy=dchi, train=TrainConfig(epochs=2)).to_dict()["privacy"]["noise"] == "once"
