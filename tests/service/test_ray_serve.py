"""`splitpriv serve --ray`'s deployment on a local Ray instance (2 CPUs, proxy on 127.0.0.1, 2 replicas sharing a
state dir): calls of one session stick to one replica, two customers on different replicas each get their solo
result, and a replica killed with SIGKILL mid-training costs nothing once the customer resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

pytest.importorskip("ray", reason="needs the ray extra (pip install '.[ray]')")

from splitpriv.config import PrivacyConfig, TrainConfig  # noqa: E402
from splitpriv.contract import SESSION_HEADER, SessionConfig  # noqa: E402
from splitpriv.roles.customer import Customer  # noqa: E402
from splitpriv.roles.vendor import Vendor  # noqa: E402
from splitpriv.transport import InProcessTransport  # noqa: E402
from splitpriv.transport.http_client import HttpTransport  # noqa: E402

CONFIG = (SessionConfig(n_bottom_layers=2, total_steps=6, seed=0, dropout=False),
          PrivacyConfig(mechanism="dchi", eta=10.0), TrainConfig(batch_size=8, max_length=32, noise_seed=5))
TTL = 3.0
TRAIN = ["--dataset", "sst2-sample", "--train-limit", "64", "--eval-limit", "16", "-k", "2", "--mechanism", "dchi",
         "--eta", "10", "--batch-size", "16", "--epochs", "2", "--noise-seed", "3", "--keep-session", "--no-progress",
         "--json"]
STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_of(url: str, session_id: str) -> str:
    return httpx.get(f"{url}/v1/health", headers={SESSION_HEADER: session_id}, timeout=30).json()["replica"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``splitpriv serve --ray`` in its own process: a local Ray instance, 2 replicas of 1 CPU on a shared dir."""
    state, port = tmp_path_factory.mktemp("shared-state"), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "serve", "--ray", "--replicas", "2",
                             "--replica-cpus", "1", "--state-dir", str(state), "--port", str(port), "--lease-ttl",
                             str(TTL), "--checkpoint-every", "1", "--idle-unload", "0"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "splitpriv serve --ray exited while starting"
            assert time.monotonic() < deadline, "the replicas were not both routed to within 180 s"
            try:
                if len({replica_of(url, f"probe-{i}") for i in range(16)}) == 2:  # the router sees both
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        yield url, state
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=120) == 0, "splitpriv serve --ray did not shut down cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_ray_refuses_a_setup_it_cannot_run():
    from typer.testing import CliRunner

    from splitpriv.cli import app

    result = CliRunner().invoke(app, ["serve", "--ray"])
    assert result.exit_code == 2 and "--state-dir" in result.output and "Traceback" not in result.output


def test_one_session_sticks_to_one_replica(cluster):
    url, _ = cluster
    owners = {f"s{i}": {replica_of(url, f"s{i}") for _ in range(6)} for i in range(8)}
    assert all(len(r) == 1 for r in owners.values()), owners
    assert len(set().union(*owners.values())) == 2, "eight sessions all hashed to one replica"


def test_two_customers_on_different_replicas_match_their_solo_runs(cluster, data_dir, train_steps):
    from splitpriv.data import load_dataset

    url, _ = cluster
    train = load_dataset("sst2", "train", limit=48, seed=0)
    expected = train_steps(Customer.open(InProcessTransport(Vendor()), *CONFIG), train.texts, train.labels, range(1, 7))
    customers, tries = [], 0
    while len(customers) < 2:  # the second one on the other replica (session ids are random)
        tries += 1
        assert tries < 40
        customer = Customer.open(HttpTransport(url), *CONFIG)
        where = replica_of(url, customer.transport.session.session_id)
        if customers and where == customers[0][1]:
            customer.transport.close()
            continue
        customers.append((customer, where))
    results, errors = {}, []

    def work(i, customer):
        try:
            results[i] = train_steps(customer, train.texts, train.labels, range(1, 7))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, (c, _) in enumerate(customers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (customer, where) in enumerate(customers):
        assert results[i] == pytest.approx(expected, abs=1e-6)
        assert replica_of(url, customer.transport.session.session_id) == where
        customer.transport.close()


def _train(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _session(run) -> dict:
    return json.loads((run / "customer" / "session.json").read_text())


def _adapter(state, session_id: str) -> dict:
    from safetensors.torch import load_file

    root = state / "sessions" / session_id
    current = root / (root / "CURRENT").read_text().strip()
    return {f"{f.relative_to(current)}:{k}": v for f in sorted((current / "top").rglob("*.safetensors"))
            for k, v in load_file(str(f)).items()}


@pytest.mark.slow
def test_a_replica_killed_mid_training_costs_nothing_after_the_resume(cluster, tmp_path):
    url, state = cluster
    whole = _train([*TRAIN, "--vendor", url, "--out", str(tmp_path / "whole")])
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]

    run = tmp_path / "run"
    customer = _train([*TRAIN, "--vendor", url, "--out", str(run)])
    deadline, victim = time.monotonic() + 300, None
    while victim is None:
        assert time.monotonic() < deadline and customer.poll() is None, customer.communicate()
        try:
            info = _session(run)
            status = httpx.get(f"{url}/v1/sessions/{info['session_id']}/status", timeout=10,
                               headers={"Authorization": f"Bearer {info['token']}", SESSION_HEADER: info["session_id"]})
            if status.status_code == 200 and status.json()["completed_step"] >= 3:
                victim = replica_of(url, info["session_id"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, httpx.HTTPError):
            time.sleep(0.05)
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)  # the replica that holds the session
    out, err = customer.communicate(timeout=600)
    resumed = customer.returncode != 0
    if resumed:  # the customer gave up on the dead replica: its journal continues the run
        again = _train(["--resume", str(run), "--keep-session", "--no-progress", "--json"])
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0, err[-3000:]

    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "whole"))
    assert len(metrics["losses"]) == STEPS
    assert metrics["losses"] == pytest.approx(expected["losses"], abs=1e-6)
    assert metrics["accuracy"] == expected["accuracy"]
    sid = _session(run)["session_id"]
    mine, theirs = _adapter(state, sid), _adapter(state, _session(tmp_path / "whole")["session_id"])
    assert sorted(mine) == sorted(theirs)
    for name, tensor in mine.items():
        torch.testing.assert_close(tensor, theirs[name], atol=1e-6, rtol=0, msg=name)
    lease = json.loads((state / "leases" / f"{sid}.json").read_text())
    assert lease["holder"] != victim, "the session now lives on a live replica"
    print(f"replica {victim} killed after step >= 3; customer {'resumed' if resumed else 'retried through'}")
