"""The vendor's pre-training of a privatizer for a causal LM (splitpriv.roles.vendor.privatizer_pretrain, task
causal-lm) on the tiny random Llama with SmolLM2's tokenizer: distillation lowers the held-out next-token KL of the
private split, the customer's parts (embeddings, bottom blocks, tail, LM head) stay bit-identical while the middle
moves, the folder loads as a causal LM whose vendor serves a session of the same privatizer with the pretrained
halves (the customer's inside its bottom package), the principal-component start inverts the bottleneck on its
subspace, and bad input is one clear error before anything is trained or written."""

import json

import pytest
import torch

from splitpriv import load_model
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import SessionConfig, unpack_files
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.roles.vendor.privatizer_pretrain import pretrain_privatizer
from splitpriv.roles.vendor.robust_top import RobustTopConfig, base_model_of
from splitpriv.transport import InProcessTransport

R = 8
SPEC = {"name": "bottleneck", "r": R, "clip": 1.0, "normalize": False}
NOISE = PrivacyConfig("dchi", eta=16)  # E||n|| = r / eta = 0.5 against a signal of norm <= C = 1


def _config(**kw) -> RobustTopConfig:
    return RobustTopConfig(**{"privacy": NOISE, "n_bottom_layers": 1, "steps": 30, "batch_size": 8, "n_public": 96,
                              "n_heldout": 16, "max_length": 16, "lr": 1e-2, **kw})


@pytest.fixture(scope="module")
def peaked_lm_dir(tiny_lm_dir, tmp_path_factory):
    """The tiny random Llama with its (tied) embeddings × 25: as initialised its next-token distributions are all
    but uniform (held-out KL of the private split 0.005 nats), which leaves distillation nothing to recover."""
    model, tokenizer = load_model(str(tiny_lm_dir), task="causal-lm")
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25)
    folder = tmp_path_factory.mktemp("peaked") / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(peaked_lm_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "model"
    meta = pretrain_privatizer(SPEC, _config(), out, model=str(peaked_lm_dir), task="causal-lm", n_tail_layers=1,
                               progress=False)
    return out, meta


def test_pretraining_lowers_the_heldout_kl_and_moves_only_the_middle(pretrained, peaked_lm_dir):
    out, meta = pretrained
    assert meta["task"] == "causal-lm" and meta["n_tail_layers"] == 1 and meta["public_init"]
    assert meta["heldout_error"].startswith("next-token KL")
    assert 0 <= meta["heldout_error_after"] < 0.9 * meta["heldout_error_before"], meta  # measured 4.69 -> 3.99
    assert json.loads((out / "privatizer.json").read_text())["task"] == "causal-lm"
    assert base_model_of(str(out)) == str(peaked_lm_dir)  # the centralized baseline trains the clean model
    clean = load_model(str(peaked_lm_dir), task="causal-lm")[0].state_dict()
    adapted = load_model(str(out), task="causal-lm")[0].state_dict()  # an ordinary causal-LM folder, head included
    assert set(adapted) == set(clean)
    moved = {n for n in clean if not torch.equal(clean[n], adapted[n])}
    assert moved and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in moved), sorted(moved)


def test_the_folder_serves_a_session_whose_bottom_package_carries_the_pretrained_projection(pretrained,
                                                                                           lm_examples):
    from safetensors.torch import load_file

    out, _ = pretrained
    saved = load_file(str(out / "privatizer.safetensors"))
    vendor = Vendor(str(out))
    session = SessionConfig(task="causal-lm", n_bottom_layers=1, n_tail_layers=1, total_steps=2, lr=1e-2,
                            privatizer=SPEC)
    transport = InProcessTransport(vendor)
    customer = Customer.open(transport, session, PrivacyConfig("dchi", eta=16, privatizer=SPEC),
                             TrainConfig(batch_size=4, noise_seed=0))
    files = unpack_files(transport.bottom_package())
    assert json.loads(files["bottom.json"])["privatizer"] == SPEC
    assert torch.equal(customer.bottom.privatizer.proj.weight, saved["customer.proj.weight"])
    state = vendor.session(transport.session.session_id, transport.session.token)
    assert torch.equal(state.parts.top.privatizer_up.weight, saved["vendor.weight"])
    losses = customer.fit(lm_examples[:8], progress=False)["losses"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ValueError, match="trained for another split.*n_bottom_layers"):
        vendor.open_session(SessionConfig(task="causal-lm", n_bottom_layers=2, n_tail_layers=1, total_steps=1,
                                          privatizer=SPEC))


def test_the_public_start_inverts_the_bottleneck_on_its_principal_subspace():
    from splitpriv.privacy.privatizer import build_privatizer

    built = build_privatizer(SPEC)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(500, R, generator=g) @ torch.randn(R, 32, generator=g) * 5 + 3  # rank r, off-centre
    half = built.customer_half(32)
    up = built.vendor_half(half, 32, sample)
    assert built.fit_public(half, up, sample)
    with torch.no_grad():
        u = half(sample[None])[0]
        unclipped = u.norm(dim=-1) < 1 - 1e-4
        assert 0.85 <= float(unclipped.float().mean()) <= 0.95  # nine in ten pass the clip unchanged
        torch.testing.assert_close(up(u)[unclipped], sample[unclipped], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("spec, kw, words", [
    (None, {}, "needs a privatizer"),
    ({**SPEC, "r": 64}, {}, "bottleneck r=64 is above the model width d=32"),
    (SPEC, {"n_bottom_layers": 2, "n_tail_layers": 2}, "leave the vendor no block of this model's 4"),
    (SPEC, {"n_bottom_layers": 3, "n_tail_layers": 2}, r"k \+ j at most 4"),
    (SPEC, {"task": "sequence-classification", "n_tail_layers": 1}, "n_tail_layers=1 needs a causal LM"),
    ({"name": "prototype", "K": 20000}, {}, "K=20000 is above the 16384 tokens"),
])
def test_bad_input_is_one_clear_error_before_anything_is_written(tiny_lm_dir, tmp_path, spec, kw, words):
    kw = {"task": "causal-lm", "n_tail_layers": 1, **kw}
    config = _config(n_bottom_layers=kw.pop("n_bottom_layers", 1))
    with pytest.raises(ValueError, match=words):
        pretrain_privatizer(spec, config, tmp_path / "m", model=str(tiny_lm_dir), progress=False, **kw)
    assert not (tmp_path / "m").exists()


def test_cli_pretrains_for_a_causal_lm_and_names_bad_input(tiny_lm_dir, data_dir, tmp_path):
    from typer.testing import CliRunner

    from splitpriv.cli import app

    runner = CliRunner()
    base = ["pretrain-privatizer", "--model", str(tiny_lm_dir), "--task", "causal-lm", "-k", "1", "--eta", "16",
            "--out", str(tmp_path / "m")]
    bad = runner.invoke(app, [*base, "-j", "1", "--privatizer", "bottleneck:r=64"])
    assert bad.exit_code == 2 and "above the model width d=32" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, [*base, "-j", "3", "--privatizer", "bottleneck:r=8"])
    assert bad.exit_code == 2 and "leave the vendor no block" in bad.output
    assert not (tmp_path / "m").exists()
    ok = runner.invoke(app, [*base, "-j", "1", "--privatizer", "bottleneck:r=8", "--steps", "2", "--batch-size", "4",
                             "--max-length", "16", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "next-token KL" in ok.output
    meta = json.loads((tmp_path / "m" / "robust_top.json").read_text())
    assert meta["config"]["lr"] == 1e-4 and meta["n_tail_layers"] == 1 and meta["public_init"] is True


def test_served_over_http_the_folder_warms_up_as_a_causal_lm_and_ships_the_projection(pretrained, loopback):
    from safetensors.torch import load_file

    from splitpriv.roles.vendor.warmup import warm_up
    from splitpriv.service.app import create_app
    from splitpriv.transport import HttpTransport

    out, _ = pretrained
    vendor = Vendor(str(out))
    assert warm_up(vendor) == "causal-lm"  # what `splitpriv serve --model DIR` loads before it reports ready
    server = loopback(create_app(vendor)).start()
    try:
        transport = HttpTransport(server.url)
        session = SessionConfig(task="causal-lm", n_bottom_layers=1, n_tail_layers=1, total_steps=1, privatizer=SPEC)
        customer = Customer.open(transport, session, PrivacyConfig("dchi", eta=16, privatizer=SPEC),
                                 TrainConfig(noise_seed=0))
        saved = load_file(str(out / "privatizer.safetensors"))
        assert torch.equal(customer.bottom.privatizer.proj.weight, saved["customer.proj.weight"])
        assert len(customer.generate([5, 6, 7], 3, stop_ids=())) == 3
        transport.close()
    finally:
        server.stop()
