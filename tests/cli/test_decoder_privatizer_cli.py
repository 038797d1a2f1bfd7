"""`splitpriv train --task causal-lm --privatizer ...` and `splitpriv generate` on a tiny random Llama (SmolLM2's
tokenizer), in process and with `--vendor URL` over a real loopback server: the same run generates the same tokens
both ways (fixed noise seed), and bad input is exit code 2 with one line that leaves a finished run folder as it
was."""

import json

import pytest
from typer.testing import CliRunner

from splitpriv.cli import app
from splitpriv.roles.vendor import Vendor
from splitpriv.service.app import create_app
from splitpriv.tasks import task_of

RECORDS = [("Is this review positive or negative?\n\nA fine, warm film.", "positive"),
           ("Is this review positive or negative?\n\nDull and far too long.", "negative"),
           ("Name a colour.", "Blue."), ("Continue.", "The city lies on the river and has an old harbour.")] * 2
PRIVATE = ["--privatizer", "bottleneck:r=8", "--mechanism", "gaussian", "--sigma", "0.05", "--noise-seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in RECORDS))
    return path


def _train(tiny_lm_dir, data, out, *extra):
    return CliRunner().invoke(app, ["train", "--model", str(tiny_lm_dir), "--task", "causal-lm", "--dataset",
                                    str(data), "-k", "1", "-j", "1", "--batch-size", "4", "--lr", "1e-2", *PRIVATE,
                                    "--no-progress", "--json", "--out", str(out), *extra])


def _generate(run, *extra):
    answer = CliRunner().invoke(app, ["generate", "--run", str(run), "--prompt", "Name a colour.",
                                      "--max-new-tokens", "5", "--json", *extra])
    assert answer.exit_code == 0, answer.output
    return json.loads(answer.output.strip().splitlines()[-1])


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_train_and_generate_in_process_and_over_http(tiny_lm_dir, data, tmp_path, loopback):
    run = tmp_path / "run"
    trained = _train(tiny_lm_dir, data, run)
    assert trained.exit_code == 0, trained.output
    metrics = json.loads(trained.output.strip().splitlines()[-1])
    assert metrics["config"]["privacy"]["privatizer"]["r"] == 8 and metrics["perplexity"] > 1
    summary = task_of("causal-lm").summary(metrics, run).splitlines()[0]
    assert summary.endswith("k=1, j=1, lora, noise gaussian sigma=0.05, privatizer bottleneck r=8 clip=1.0 "
                            "normalize=False"), summary
    local = _generate(run)
    assert len(local["tokens"]) == 5
    server = loopback(create_app(Vendor(str(tiny_lm_dir), state_dir=run / "vendor-state"))).start()
    try:
        assert _generate(run, "--vendor", server.url)["tokens"] == local["tokens"]  # the same session, over HTTP
        remote = tmp_path / "remote"
        trained = _train(tiny_lm_dir, data, remote, "--vendor", server.url, "--keep-session")
        assert trained.exit_code == 0, trained.output
        assert json.loads((remote / "run.json").read_text())["vendor_url"] == server.url
        assert len(_generate(remote)["tokens"]) == 5  # the run's own vendor, over HTTP
        before = _snapshot(run)
        for where in ([], ["--vendor", server.url]):
            for extra, words in [(["--privatizer", "bottleneck:r=64"], "above the model width d=32"),
                                 (["-k", "2", "-j", "2"], "leave the vendor no block"),
                                 (["--privatizer", "prototype:K=20000"], "K=20000 is above the 16384 tokens"),
                                 (["--privatizer-warm-start", "1"], "causal-lm has none")]:
                bad = _train(tiny_lm_dir, data, run, *where, *extra)
                assert bad.exit_code == 2 and words in bad.output, bad.output
                assert len(bad.output.strip().splitlines()) == 1, bad.output
        assert _snapshot(run) == before  # the finished run is as it was, and still generates
        assert _generate(run)["tokens"] == local["tokens"]
    finally:
        server.stop()
