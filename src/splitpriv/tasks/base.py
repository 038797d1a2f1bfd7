"""The task a split fine-tuning run learns: one registry entry per task, one file each.

A :class:`Task` supplies what differs between tasks and nothing else: its data and how a batch is collated, the loss,
the customer's end of the model (a classification head it may keep, a causal LM's tail it always keeps), how a
model is scored, what the centralized reference adds to the split, and what a run records and prints. The customer,
the run, the centralized trainer and the command line are written once and ask the task::

    from splitpriv.tasks import TASKS, Task

    @TASKS.register("mine")
    class Mine(Task): ...

``Task.value`` is the name the task has in configs, sessions and records (``RunConfig.task``,
``SessionConfig.task``, ``--task``); the registry also accepts it as an alias.

Threat model: a task decides what the customer keeps at home (labels, targets, its end of the model) and therefore
what the gradient it sends up reveals; see each task's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from splitpriv.registry import Registry

TASKS: "Registry[Task]" = Registry("task", "splitpriv.tasks")


@dataclass
class Batches:
    """A task's training data as the customer and the centralized trainer iterate it: ``n`` examples and
    ``batch(index) -> (ids, mask, targets, cache_index)`` (``cache_index`` keys the noise-once cache, or ``None``).
    Labelled tasks also expose ``encodings`` and ``labels``, which the customer may replace before training
    (label DP, a resumed journal)."""

    n: int
    collate: Callable[["Batches", torch.Tensor], tuple]
    encodings: list | None = None
    labels: torch.Tensor | None = None

    def batch(self, index: torch.Tensor) -> tuple:
        return self.collate(self, index)


class Task:
    """What one task supplies. Subclasses register with ``@TASKS.register(name, aliases=(value,))``."""

    value: str = ""  # the name in configs, sessions and records
    model_task: str = ""  # the transformers head the vendor's model carries (models/: sequence-classification, causal-lm)
    end_file: str | None = None  # the file the customer's end ships in, beside the bottom
    end_trains: bool = False  # the customer's end has its own optimizer
    predicts_labels: bool = True  # private inference returns one row of logits per text
    resumable: bool = False  # a --vendor run can be resumed from the customer's journal
    default_max_length: int = 64

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config) -> tuple[Any, Any]:
        """``(train, evaluation)`` for a :class:`~splitpriv.runs.run.RunConfig`."""
        raise NotImplementedError

    def num_labels(self, train) -> int:
        return 2

    def encode(self, data, tokenizer, config):
        """``data`` in the form :meth:`batches` and :meth:`score` take, with the vendor's tokenizer."""
        return data

    def fit_args(self, train) -> tuple:
        """``train`` (as :meth:`encode` returns it) as the trainers' ``fit(data, labels)`` take it."""
        return train, None

    def check_config(self, config) -> None:
        """Refuse run options this task has no use for, by name."""

    def check_session(self, session) -> None:
        """Refuse session options this task has no use for (``ValueError`` naming the field)."""

    def write_data_files(self, train, out_dir: Path) -> None:
        """Files about the data a run folder keeps beside ``run.json``."""

    # -- training -----------------------------------------------------------------------------------------------
    def batches(self, trainer, data, labels=None) -> Batches:
        """The training batches of ``data``; ``trainer`` is the customer or the centralized trainer (its
        tokenizer and training config)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, targets) -> torch.Tensor:
        raise NotImplementedError

    def received(self, outputs: torch.Tensor) -> torch.Tensor:
        """The vendor's outputs as the customer's end takes them."""
        return outputs

    # -- the customer's end -------------------------------------------------------------------------------------
    def customer_end(self, directory: Path) -> nn.Module | None:
        """The module the customer applies to the vendor's outputs, from the package files in ``directory``."""
        return None

    def apply_end(self, end: nn.Module | None, received: torch.Tensor, mask: torch.Tensor, *, step: int,
                  train: bool, seed: int, dropout: bool) -> torch.Tensor:
        return received if end is None else end(received, mask)

    def save_end(self, end: nn.Module | None, directory: Path) -> None:
        """Write the customer's end beside its bottom."""

    def centralized_end(self, parts, train_bottom: bool) -> nn.Module | None:
        """The end the centralized reference applies after the tuned top (the customer's, in one graph)."""
        return None

    # -- scoring and records ------------------------------------------------------------------------------------
    def score(self, model, evaluation, *, progress: bool = False) -> dict:
        """Held-out scores of ``model`` (a customer or the centralized trainer)."""
        raise NotImplementedError

    def utility(self, scores: dict) -> dict:
        """The experiment grid's utility fields from :meth:`score`'s (or a record's) scores: ``accuracy``,
        ``macro_f1`` (None where the task has no classes) and ``correct`` (one "0"/"1" per evaluation example, what
        the frontier's paired interval needs)."""
        return {k: scores.get(k) for k in ("accuracy", "macro_f1", "correct")}

    def record(self, config, train, evaluation, result: dict) -> dict:
        """``metrics.json``'s task fields from a training result (losses already taken out)."""
        return {"n_train": len(train), "n_eval": len(evaluation), **result}

    def compare(self, metrics: dict, baseline: dict) -> None:
        """Add the centralized reference's scores to ``metrics``."""
        metrics["baseline"] = {k: v for k, v in baseline.items() if k != "losses"}

    def summary(self, metrics: dict, out) -> str | None:
        """What ``splitpriv train`` prints (``None``: the command's default summary)."""
        return None


def task_of(name: str) -> Task:
    """The registered task named ``name`` (or its config value), as an instance."""
    entry = TASKS.get(name)
    return entry() if isinstance(entry, type) else entry


def task_values() -> list[str]:
    """Every registered task's config value, in registration order (``--task`` choices, valid session tasks)."""
    return [task_of(name).value for name in TASKS.names()]
