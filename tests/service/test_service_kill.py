"""Issue 17's crash test with real processes and SIGKILL: a vendor service process (tests/service/recording_vendor.py,
state dir, checkpoint every step) and a `splitpriv train --vendor URL --out DIR` process; the vendor is killed at
one random step and restarted from its state dir on the same port while the customer waits it out, then the customer
is killed at a later random step and continued with `splitpriv train --resume DIR`.

With fixed seeds the resumed run's losses, accuracy and final LoRA adapter equal an uninterrupted run's. With OS
noise (nobody can reproduce it) the vendor never receives two different noisy copies of one sentence: over
retries, the restart, the resume and both epochs, it sees exactly as many distinct sequences as there are training
sentences, and every copy of a step is identical."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("recording_vendor.py")
N_TRAIN, BATCH, EPOCHS = 96, 16, 2
STEPS = N_TRAIN // BATCH * EPOCHS
TRAIN = ["--dataset", "sst2-sample", "--train-limit", str(N_TRAIN), "--eval-limit", "16", "-k", "2",
         "--mechanism", "dchi", "--eta", "10", "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
         "--keep-session", "--no-progress", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VendorProcess:
    def __init__(self, state: Path, record: Path):
        self.state, self.record, self.port = state, record, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> VendorProcess:
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--state-dir", str(self.state), "--port",
                                      str(self.port), "--record", str(self.record)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the vendor process exited while starting"
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the vendor process did not come up within 120 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


def _train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{what} exited with {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}"


def _session(run: Path) -> dict:
    return json.loads((run / "customer" / "session.json").read_text())


def _wait_for_step(vendor: VendorProcess, run: Path, customer: subprocess.Popen, step: int) -> None:
    """Until the vendor reports ``step`` completed in the run's session (written as soon as it opened)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert customer.poll() is None, f"the customer ended before step {step}: {customer.communicate()}"
        try:
            session = _session(run)
            status = httpx.get(f"{vendor.url}/v1/sessions/{session['session_id']}/status", timeout=5,
                               headers={"Authorization": f"Bearer {session['token']}"})
            if status.status_code == 200 and status.json()["completed_step"] >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not reached within 300 s")


def _adapter(state: Path, session_id: str) -> dict:
    """The session's newest checkpointed top (the vendor checkpoints every step and at the run's end)."""
    checkpoints = sorted((state / "sessions" / session_id).glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, f"no checkpoint of session {session_id}"
    files = sorted((checkpoints[-1] / "top").rglob("*.safetensors"))
    assert files
    return {f"{f.relative_to(checkpoints[-1])}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("noise_seed", [3, None], ids=["fixed noise", "OS noise"])
def test_kill_9_of_vendor_and_customer_then_resume(tmp_path, noise_seed):
    rng = random.Random()
    kill_vendor_at = rng.randint(1, STEPS // 2 - 1)
    kill_customer_at = rng.randint(kill_vendor_at + 2, STEPS - 2)
    where = f"(vendor killed after step {kill_vendor_at}, customer after step {kill_customer_at})"
    seeds = ["--noise-seed", str(noise_seed)] if noise_seed is not None else []
    state, record = tmp_path / "vendor-state", tmp_path / "forwards.jsonl"
    vendor = VendorProcess(state, record).start()
    customer = None
    try:
        if noise_seed is not None:  # the uninterrupted reference, a session of its own on the same vendor
            _finish(_train([*TRAIN, *seeds, "--vendor", vendor.url, "--out", str(tmp_path / "whole")]), "reference")
        run = tmp_path / "run"
        customer = _train([*TRAIN, *seeds, "--vendor", vendor.url, "--out", str(run)])
        _wait_for_step(vendor, run, customer, kill_vendor_at)
        vendor.kill()
        vendor.start()  # from its state dir, on the same port; the customer retries meanwhile
        _wait_for_step(vendor, run, customer, kill_customer_at)
        customer.send_signal(signal.SIGKILL)
        customer.wait(timeout=30)
        _finish(_train(["--resume", str(run), "--keep-session", "--no-progress", "--json"]), f"resume {where}")

        metrics = json.loads((run / "metrics.json").read_text())
        assert len(metrics["losses"]) == STEPS, where
        sid = _session(run)["session_id"]
        if noise_seed is not None:
            expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())
            assert metrics["losses"] == pytest.approx(expected["losses"], abs=1e-6), where
            assert metrics["accuracy"] == expected["accuracy"], where
            mine, theirs = _adapter(state, sid), _adapter(state, _session(tmp_path / "whole")["session_id"])
            assert sorted(mine) == sorted(theirs)
            for name, tensor in mine.items():
                torch.testing.assert_close(tensor, theirs[name], atol=1e-6, rtol=0, msg=f"{name} {where}")

        seen = [json.loads(line) for line in record.read_text().splitlines()]
        by_step: dict[int, list] = {}
        for line in seen:
            if line["session"] == sid:
                by_step.setdefault(line["step"], []).append(line["sequences"])
        assert sorted(by_step) == list(range(1, STEPS + 1)), where
        for step, copies in by_step.items():
            assert all(c == copies[0] for c in copies), f"step {step} reached the vendor with new noise {where}"
        distinct = {h for copies in by_step.values() for h in copies[0]}
        assert len(distinct) == N_TRAIN, f"{len(distinct)} distinct noisy sequences for {N_TRAIN} sentences {where}"
    finally:
        if customer is not None and customer.poll() is None:
            customer.kill()
        vendor.kill()
