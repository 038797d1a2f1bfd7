"""The task registry: classification and causal-lm are entries like any other, and a task written in one file
outside the source tree (tests/plugins/toy_task.py) is accepted by the command line, the session and the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitpriv.contract import SessionConfig
from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from splitpriv.tasks import TASKS, task_of, task_values

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def test_both_tasks_are_registered_under_their_config_values():
    assert set(task_values()) == {SEQUENCE_CLASSIFICATION, CAUSAL_LM}
    assert task_of("classification") is not None and TASKS.canonical(SEQUENCE_CLASSIFICATION) == "classification"
    assert task_of(CAUSAL_LM).model_task == CAUSAL_LM and not task_of(CAUSAL_LM).predicts_labels


def test_an_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match="causal-lm"):
        SessionConfig(task="regression").validate()


def test_each_task_refuses_session_options_it_has_no_use_for():
    with pytest.raises(ValueError, match="n_tail_layers"):
        SessionConfig(n_tail_layers=1).validate()
    with pytest.raises(ValueError, match="classification head"):
        SessionConfig(task=CAUSAL_LM, head="customer").validate()


def test_losses():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(task_of("classification").loss(logits, None, None, labels), expected)
    ids, mask = torch.tensor([[3, 1, 2]]), torch.ones(1, 3, dtype=torch.long)
    lm = torch.zeros(1, 3, 4)
    lm[0, 0, 1] = lm[0, 1, 2] = 5.0  # predicts the next token
    targets = torch.tensor([[0, 1, 1]])
    assert float(task_of(CAUSAL_LM).loss(lm, ids, mask, targets)) < 0.05


def _cli(*args: str) -> str:
    env = dict(os.environ, SPLITPRIV_PLUGINS="toy_task", COLUMNS="400", TERM="dumb", NO_COLOR="1",
               PYTHONPATH=f"{PLUGINS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "splitpriv.cli", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_task_in_one_file_trains_from_the_command_line(data_dir):
    assert "toy-smoothed" in _cli("train", "--help")
    metrics = json.loads(_cli("train", "--task", "toy-smoothed", "--dataset", "sst2-sample", "--train-limit", "16",
                              "--eval-limit", "16", "--batch-size", "8", "--no-progress", "--json").splitlines()[-1])
    assert metrics["config"]["task"] == "toy-smoothed" and 0.0 <= metrics["accuracy"] <= 1.0
