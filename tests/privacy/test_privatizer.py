"""Learned privatizers (splitpriv.privacy.privatizer, .bottleneck) folded into the split, the session, HTTP, the
vendor's pre-training and the `privatize` export, on the real MiniLM."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import torch

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.privacy.privatizer import build_privatizer, parse_privatizer_spec
from splitpriv.contract import ForwardRequest, PredictRequest, ProtocolError, SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.parts import load_bottom, save_bottom, split_model
from splitpriv.transport import InProcessTransport

D, R = 384, 8
SPEC = {"name": "bottleneck", "r": R, "clip": 1.0, "normalize": False}
TEXTS = ["a gripping , beautifully shot film", "dull", "the plot makes no sense at all , and the acting is worse"]


@pytest.mark.parametrize("spec, words", [
    ("bottleneck:r", "does not parse"), ("bottleneck:r=16,,clip", "does not parse"), ("bottleneck:r=0", "positive"),
    ("bottleneck:r=-4", "positive"), ("bottleneck:r=2.5", "integer"), ("bottleneck:r=8,clip=0", "clip"),
    ("bottleneck:r=8,clip=inf", "clip"), ("bottleneck:r=8,clip=big", "clip"), ("bottleneck:r=8,q=1", "unknown"),
    ("bottleneck:r=8,r=9", "twice"), ("funnel:r=8", "unknown privatizer"), ("bottleneck", "missing"),
])
def test_bad_specs_are_one_clear_error(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_privatizer_spec(spec)


def test_spec_parses_to_the_canonical_config_and_the_customer_config_keeps_old_keys():
    assert parse_privatizer_spec(f"bottleneck:r={R},clip=1") == SPEC
    assert parse_privatizer_spec("none") is None
    assert parse_privatizer_spec("bottleneck:r=4,normalize=true")["normalize"] is True
    plain, private = PrivacyConfig("dchi", eta=10), PrivacyConfig("dchi", eta=10, privatizer=f"bottleneck:r={R}")
    assert "privatizer" not in plain.to_dict() and "privatizer" not in plain.legacy_layout()
    assert private.to_dict()["privatizer"] == SPEC == PrivacyConfig.from_dict(private.to_dict()).privatizer
    with pytest.raises(ValueError, match="positive"):
        PrivacyConfig("dchi", eta=10, privatizer="bottleneck:r=0")
    with pytest.raises(ValueError, match="no vendor denoising"):
        SessionConfig(privatizer=SPEC, denoise="nn").validate()


def test_split_with_a_bottleneck(minilm, tmp_path):
    model, tokenizer = minilm
    model.eval()
    with pytest.raises(ValueError, match="above the model width d=384"):
        split_model(model, 0, privatizer="bottleneck:r=500")
    parts = split_model(model, 1, privatizer=SPEC)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    u = parts.bottom(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert u.shape == (3, enc["input_ids"].shape[1], R) and bool((u.norm(dim=-1) <= 1 + 1e-5).all())
    assert parts.top(u, enc["attention_mask"]).shape == (3, 2)
    with pytest.raises(ValueError, match="width 384"):
        parts.top(torch.randn(3, u.shape[1], D), enc["attention_mask"])
    assert parts.disclosure().shipped_parameters > split_model(model, 1).disclosure().shipped_parameters
    save_bottom(parts.bottom, tmp_path, tokenizer)
    assert json.loads((tmp_path / "bottom.json").read_text())["privatizer"] == SPEC
    loaded = load_bottom(tmp_path)
    assert torch.equal(loaded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]), u)


@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter", "full"])
def test_every_tuning_method_trains_the_up_projection(minilm, method):
    from splitpriv.tuning import apply_tuning

    parts = split_model(minilm[0], 5, privatizer=SPEC)
    tuned = apply_tuning(parts.top, {"method": method})
    names = [n for n, p in tuned.module.named_parameters() if p.requires_grad and "privatizer_up" in n]
    assert len(names) == 2, names
    assert not any(p.requires_grad for p in parts.top.privatizer_up.parameters())  # the session's copy trains


def _customer(vendor, privacy, session, **train):
    transport = InProcessTransport(vendor)
    return Customer.open(transport, session, privacy, TrainConfig(batch_size=8, seed=0, **train))


def test_in_process_session_takes_width_r_and_trains_the_up_projection(minilm):
    vendor = Vendor()
    session = SessionConfig(n_bottom_layers=0, total_steps=2, privatizer=SPEC)
    customer = _customer(vendor, PrivacyConfig("dchi", eta=8, privatizer=SPEC), session, noise_seed=1)
    state = vendor.session(customer.transport.session.session_id, customer.transport.session.token)
    assert state.d_model == R == customer.transport.session.d_model
    before = {n: p.detach().clone() for n, p in state.tuned.module.named_parameters()
              if "privatizer_up" in n and p.requires_grad}
    sent = []
    customer.transport.tap = lambda direction, message: sent.append(message) if direction == "to_vendor" else None
    customer.fit(TEXTS * 5, [1, 0, 0] * 5, progress=False)
    widths = {m.hidden.shape[-1] for m in sent if isinstance(m, ForwardRequest)}
    assert widths == {R}
    after = dict(state.tuned.module.named_parameters())
    assert len(before) == 2 and all(not torch.equal(before[n], after[n]) for n in before)
    sid, token = customer.transport.session.session_id, customer.transport.session.token
    with pytest.raises(ProtocolError, match=f"\\[batch, tokens, {R}\\]"):
        vendor.predict(PredictRequest(sid, torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.long)), token)
    with pytest.raises(ValueError, match="bottom holds privatizer"):
        _customer(vendor, PrivacyConfig("dchi", eta=8), session)


def test_http_session_refuses_a_wrong_width(minilm):
    uvicorn = pytest.importorskip("uvicorn")
    from splitpriv.service import create_app
    from splitpriv.transport.http_client import HttpTransport

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Vendor()), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        session = SessionConfig(n_bottom_layers=0, total_steps=2, privatizer=SPEC)
        customer = Customer.open(HttpTransport(url), session, PrivacyConfig("gaussian", sigma=0.5, privatizer=SPEC),
                                 TrainConfig(batch_size=8))
        assert customer.bottom.privatizer.privatizer_config == SPEC
        assert customer.predict_logits(TEXTS).shape == (3, 2)
        info = customer.transport.session
        body = ForwardRequest(info.session_id, 1, torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.long)).to_bytes()
        reply = httpx.post(f"{url}/v1/sessions/{info.session_id}/forward", content=body,
                           headers={"Authorization": f"Bearer {info.token}"}, timeout=60)
        assert reply.status_code == 400 and f"[batch, tokens, {R}]" in reply.json()["error"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, minilm):
    from splitpriv.runs.run import RunConfig, run

    out = tmp_path_factory.mktemp("run")
    config = RunConfig(dataset="sst2-sample", train_limit=16, eval_limit=8, bottom_layers=1,
                       privacy=PrivacyConfig("dchi", eta=8, privatizer=SPEC),
                       train=TrainConfig(batch_size=8, noise_seed=5, eval_batch_size=2))
    run(config, out, progress=False)
    return out


def test_privatize_writes_what_the_vendor_receives(finished_run, tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from splitpriv.cli import app
    from splitpriv.runs.run import open_run

    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n\n")
    args = ["privatize", "--run", str(finished_run), "--input", str(tmp_path / "texts.txt")]
    result = CliRunner().invoke(app, [*args, "--noise-seed", "5", "--out", str(tmp_path / "a.safetensors")])
    assert result.exit_code == 0, result.output
    CliRunner().invoke(app, [*args, "--out", str(tmp_path / "fresh.safetensors"), "--limit", "2"])
    seeded, fresh = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "fresh.safetensors"))
    n_tokens = seeded["attention_mask"].sum(1)
    assert seeded["hidden"].dtype == torch.float32 and seeded["hidden"].shape == (3, int(n_tokens.max()), R)
    assert seeded["input_ids"].shape == seeded["attention_mask"].shape and fresh["hidden"].shape[0] == 2
    assert not bool(seeded["hidden"][seeded["attention_mask"] == 0].any())
    assert not torch.equal(fresh["hidden"][:2, :fresh["hidden"].shape[1]], seeded["hidden"][:2, :fresh["hidden"].shape[1]])

    customer = open_run(finished_run)
    received = []
    customer.transport.tap = lambda d, m: received.append(m) if isinstance(m, PredictRequest) else None
    customer.predict_logits(TEXTS)
    assert len(received) == 2  # eval_batch_size 2
    row = 0
    for message in received:
        b, t = message.attention_mask.shape
        assert torch.equal(message.hidden.float(), seeded["hidden"][row:row + b, :t])
        assert torch.equal(message.attention_mask, seeded["attention_mask"][row:row + b, :t])
        row += b
    bad = CliRunner().invoke(app, ["privatize", "--run", str(tmp_path), "--input", str(tmp_path / "texts.txt"),
                                   "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "not a finished split run" in bad.output


def test_pretrained_projection_ships_inside_the_bottom_and_is_refused_for_another_k(minilm, tmp_path):
    from safetensors.torch import load_file

    from splitpriv.contract import unpack_files
    from splitpriv.roles.vendor.privatizer_pretrain import pretrain_privatizer
    from splitpriv.roles.vendor.robust_top import RobustTopConfig

    config = RobustTopConfig(privacy=PrivacyConfig("dchi", eta=8), n_bottom_layers=0, steps=2, batch_size=8,
                             n_public=16, n_heldout=8, max_length=16)
    meta = pretrain_privatizer(SPEC, config, tmp_path / "model", progress=False)
    assert meta["privatizer"] == SPEC and meta["heldout_error_after"] > 0
    saved = load_file(str(tmp_path / "model" / "privatizer.safetensors"))
    vendor = Vendor(model=str(tmp_path / "model"))
    customer = _customer(vendor, PrivacyConfig("dchi", eta=8, privatizer=SPEC),
                         SessionConfig(n_bottom_layers=0, total_steps=2, privatizer=SPEC))
    assert torch.equal(customer.bottom.privatizer.proj.weight, saved["customer.proj.weight"])
    state = vendor.session(customer.transport.session.session_id, customer.transport.session.token)
    assert torch.equal(state.parts.top.privatizer_up.weight, saved["vendor.weight"])
    files = unpack_files(customer.transport.bottom_package())
    assert json.loads(files["bottom.json"])["privatizer"] == SPEC
    for k, spec, word in [(1, SPEC, "n_bottom_layers"), (0, {**SPEC, "r": 4}, "privatizer")]:
        with pytest.raises(ValueError, match=f"trained for another split.*{word}"):
            vendor.open_session(SessionConfig(n_bottom_layers=k, total_steps=2, privatizer=spec))
    with pytest.raises(ValueError, match="open the session with it"):
        vendor.open_session(SessionConfig(total_steps=2))
    assert build_privatizer(SPEC).width(D) == R


def test_trained_bottom_fine_tunes_the_projection_and_noise_once_resends_r_wide_rows(minilm):
    vendor = Vendor()
    privacy = PrivacyConfig("dchi", eta=8, privatizer=SPEC)
    trained = _customer(vendor, privacy, SessionConfig(total_steps=2, privatizer=SPEC, train_bottom=True),
                        bottom="trained", bottom_lr=1e-2)
    before = trained.bottom.privatizer.proj.weight.detach().clone()
    trained.fit(TEXTS * 5, [1, 0, 0] * 5, progress=False)
    assert not torch.equal(before, trained.bottom.privatizer.proj.weight)
    once = _customer(vendor, privacy, SessionConfig(total_steps=4, privatizer=SPEC), epochs=2)
    assert once.privacy.noise == "once"
    sent = []
    once.transport.tap = lambda d, m: sent.append(m) if isinstance(m, ForwardRequest) else None
    once.fit(TEXTS * 5, [1, 0, 0] * 5, progress=False)
    assert len(sent) == 4 and {m.hidden.shape[-1] for m in sent} == {R}
