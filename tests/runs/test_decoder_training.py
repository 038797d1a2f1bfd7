"""Causal-LM sessions on a tiny random Llama (SmolLM2's tokenizer): split training equals centralized step for step
without noise, private generation through the vendor's cache equals local generation, the same in process and over
HTTP, and bad input gets one error naming the problem (a 4xx over HTTP)."""

import re

import httpx
import pytest
import torch

from splitpriv.tasks.causal_lm import local_generate
from splitpriv.runs.centralized import CentralizedTrainer
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.data.instructions import encode_lm, load_lm_dataset
from splitpriv.contract.errors import OutOfOrder, status_of
from splitpriv.contract import DecodeRequest, ProtocolError, SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.parts import split_model
from splitpriv.transport import HttpTransport, InProcessTransport

def _session(steps=3, **kw):
    return SessionConfig(task="causal-lm", n_bottom_layers=1, n_tail_layers=1, total_steps=steps, lr=1e-2, **kw)


@pytest.mark.parametrize("bottom", ["frozen", "trained"])
def test_split_causal_lm_training_equals_centralized(lm_vendor, tiny_lm_dir, lm_examples, bottom):
    session = _session(train_bottom=bottom == "trained")
    train = TrainConfig(batch_size=4, bottom=bottom, noise_seed=0)
    customer = Customer.open(InProcessTransport(lm_vendor), session, PrivacyConfig(), train)
    split = customer.fit(lm_examples, progress=False)["losses"]
    central = CentralizedTrainer(session, train, str(tiny_lm_dir)).fit(lm_examples)["losses"]
    assert len(split) == 3 and len(set(split)) == 3
    torch.testing.assert_close(torch.tensor(split), torch.tensor(central), atol=1e-5, rtol=0)
    held_out = customer.perplexity(lm_examples[:4])
    assert held_out["perplexity"] == pytest.approx(torch.tensor(held_out["loss"]).exp().item())


def test_noise_once_resends_each_examples_vectors(lm_vendor, lm_examples):
    """--noise once on a causal LM: the vendor sees each example's very same noisy vectors every epoch."""
    from splitpriv.contract import ForwardRequest

    def sent(noise):
        got = []
        transport = InProcessTransport(lm_vendor, tap=lambda d, m: got.append(m) if isinstance(m, ForwardRequest) else None)
        privacy = PrivacyConfig(mechanism="dchi", eta=50.0, noise=noise)
        customer = Customer.open(transport, _session(steps=2), privacy, TrainConfig(batch_size=4, epochs=2, noise_seed=3))
        customer.fit(lm_examples[:4], progress=False)
        return [sorted(m.hidden.float().norm(dim=(1, 2)).tolist()) for m in got]

    once, fresh = sent("once"), sent("per-step")
    assert once[0] == once[1], "noise once: the same vectors every epoch"
    assert fresh[0] != fresh[1], "per-step: fresh noise every epoch"


def test_the_wire_carries_d_floats_per_token(lm_vendor, lm_examples):
    seen = []
    transport = InProcessTransport(lm_vendor, tap=lambda direction, msg: seen.append((direction, msg)))
    customer = Customer.open(transport, _session(), PrivacyConfig(), TrainConfig(batch_size=4, noise_seed=0))
    customer.fit(lm_examples[:4], progress=False)
    d = customer.bottom.d_model
    for _, msg in seen:
        for name in ("hidden", "outputs", "grad_outputs", "grad_hidden"):
            value = getattr(msg, name, None)
            if value is not None:
                assert value.shape[-1] == d, (msg.kind, name, tuple(value.shape))
    assert {m.kind for _, m in seen} == {"forward", "outputs", "backward", "backward_result"}


@pytest.mark.parametrize("where", ["inprocess", "http"])
def test_private_generation_equals_local_generation(lm_vendor, lm_url, tiny_lm_dir, smollm2, where, lm_records):
    transport = InProcessTransport(lm_vendor) if where == "inprocess" else HttpTransport(lm_url)
    customer = Customer.open(transport, _session(), PrivacyConfig(), TrainConfig(noise_seed=0))
    prompt = encode_lm(lm_records[:1], smollm2[1])[0].prompt_ids
    from splitpriv import load_model

    model, _ = load_model(str(tiny_lm_dir), task="causal-lm")
    reference = local_generate(split_model(model, 0), prompt, 6, stop_ids={-1})
    assert customer.generate(prompt, 6, stop_ids=()) == reference
    with torch.no_grad():
        unsplit = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert reference == unsplit[0, len(prompt):].tolist()
    sent = transport.bytes_sent
    customer.generate(prompt, 3, stop_ids=())
    per_token = (transport.bytes_sent - sent - (len(prompt) - 1) * 4 * customer.bottom.d_model) / 3
    assert per_token < 4 * customer.bottom.d_model + 400  # one float32 d-vector (+ a small header) per token
    transport.close()


def test_generation_with_noise_and_sampling_runs(lm_vendor):
    customer = Customer.open(InProcessTransport(lm_vendor), _session(), PrivacyConfig(mechanism="dchi", eta=50),
                                   TrainConfig(noise_seed=0))
    out = customer.generate([5, 6, 7], 4, temperature=0.9, top_p=0.8, generator=torch.Generator().manual_seed(0),
                            stop_ids=())
    assert len(out) == 4


def test_decode_errors_name_the_problem(lm_vendor):
    transport = InProcessTransport(lm_vendor)
    customer = Customer.open(transport, _session(), PrivacyConfig(), TrainConfig(noise_seed=0))
    sid, d = transport.session.session_id, customer.bottom.d_model
    one = torch.ones(1, 1, dtype=torch.long)
    with pytest.raises(OutOfOrder, match="send the prompt first"):
        transport.decode(DecodeRequest(session_id=sid, hidden=torch.zeros(1, 1, d), attention_mask=one))
    with pytest.raises(ProtocolError, match="exceed this model's maximum of 256"):
        transport.decode(DecodeRequest(session_id=sid, hidden=torch.zeros(1, 300, d),
                                       attention_mask=torch.ones(1, 300, dtype=torch.long), reset=True))
    with pytest.raises(ProtocolError, match="one unpadded sequence"):
        transport.decode(DecodeRequest(session_id=sid, hidden=torch.zeros(2, 3, d),
                                       attention_mask=torch.ones(2, 3, dtype=torch.long), reset=True))


@pytest.mark.parametrize("config, message", [
    (dict(task="token-classification"), "unknown task 'token-classification'"),
    (dict(task="causal-lm", head="customer"), "no classification head"),
    (dict(n_tail_layers=1), "needs task 'causal-lm'"),
    (dict(task="causal-lm", n_bottom_layers=3, n_tail_layers=2), r"k \+ j at most 4"),
    (dict(task="causal-lm", n_bottom_layers=2, n_tail_layers=2), "leave the vendor no block"),
])
def test_bad_sessions_get_a_4xx_naming_the_problem(lm_url, config, message):
    answer = httpx.post(f"{lm_url}/v1/sessions", json={"total_steps": 1, **config})
    assert 400 <= answer.status_code < 500, answer.text
    assert re.search(message, answer.json()["error"]), answer.json()


def test_decode_on_a_classification_session_is_a_4xx(lm_url):
    transport = HttpTransport(lm_url)
    transport.open_session(SessionConfig(total_steps=1))
    hidden = torch.zeros(1, 2, 32)
    with pytest.raises(Exception, match="decode needs a causal-lm session") as caught:
        transport.decode(DecodeRequest(session_id=transport.session.session_id, hidden=hidden,
                                       attention_mask=torch.ones(1, 2, dtype=torch.long), reset=True))
    assert 400 <= status_of(caught.value) < 500  # the class the 4xx was read back as, not a word of its message
    transport.close()


def test_instruction_data_marks_the_answer_only(data_dir, smollm2):
    tokenizer = smollm2[1]
    for name in ("sst2", "financial_phrasebank"):
        example = load_lm_dataset(name, "dev", tokenizer, limit=2)[0]
        answer = tokenizer.decode([t for t, m in zip(example.ids, example.targets) if m], skip_special_tokens=True)
        assert answer == example.response and example.response in {"positive", "negative", "neutral"}
        assert example.ids[-1] == tokenizer.eos_token_id and example.ids.count(tokenizer.bos_token_id) == 3  # turns
    text = load_lm_dataset("wikitext2", "dev", tokenizer, limit=2)[0]
    assert text.targets[0] == 0 and all(text.targets[1:])


def test_user_jsonl(tmp_path, smollm2):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "Say hi.", "response": "Hi!"}\n\n{"prompt": "Count to two.", "response": "1, 2"}\n')
    lm_examples = load_lm_dataset(str(path), "train", smollm2[1])
    assert [e.response for e in lm_examples] == ["Hi!", "1, 2"]
    path.write_text('{"prompt": "no response"}\n')
    with pytest.raises(ValueError, match="mine.jsonl: row 1 needs non-empty fields 'prompt' and 'response'"):
        load_lm_dataset(str(path), "train", smollm2[1])


def test_cli_train_then_generate(tiny_lm_dir, tmp_path, lm_records):
    import json

    from typer.testing import CliRunner

    from splitpriv.cli import app

    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": p or "Continue.", "response": r}) + "\n" for p, r in lm_records))
    run_dir, runner = tmp_path / "run", CliRunner()
    trained = runner.invoke(app, ["train", "--model", str(tiny_lm_dir), "--task", "causal-lm", "--dataset", str(data),
                                  "-k", "1", "-j", "1", "--batch-size", "4", "--eval-before", "--out", str(run_dir),
                                  "--no-progress", "--json"])
    assert trained.exit_code == 0, trained.output
    metrics = json.loads(trained.output.strip().splitlines()[-1])
    assert metrics["task"] == "causal-lm" and metrics["before"]["perplexity"] > metrics["perplexity"]
    assert {"exact_match", "bytes_sent_per_step", "disclosure"} <= set(metrics)
    answer = runner.invoke(app, ["generate", "--run", str(run_dir), "--prompt", "Name a colour.",
                                 "--max-new-tokens", "3", "--json"])
    assert answer.exit_code == 0, answer.output
    assert len(json.loads(answer.output.strip().splitlines()[-1])["tokens"]) <= 3
    too_long = runner.invoke(app, ["generate", "--run", str(run_dir), "--prompt", "word " * 300])
    assert too_long.exit_code == 2 and "exceeds the model's maximum of 256" in too_long.output
    wrong = runner.invoke(app, ["train", "--model", str(tiny_lm_dir), "--task", "causal-lm", "--dataset", str(data),
                                "-k", "3", "-j", "2", "--no-progress"])
    assert wrong.exit_code == 2 and "k + j at most 4" in wrong.output
