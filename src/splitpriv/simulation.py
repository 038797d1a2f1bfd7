"""Harness: a short split training run, customer and vendor in one process, with a transcript of the wire.

The evaluator (:mod:`splitpriv.attacks.evaluation`) uses it to produce what an honest-but-curious vendor observes
while it fine-tunes: every decoded message that crossed the in-process transport, in order, with its direction
(``"to_vendor"`` / ``"to_customer"``; the transport's ``tap``). The label attack reads only that transcript and
public knowledge; the true labels per step, from replaying the customer's batching order
(:func:`splitpriv.batching.training_order`), and the customer itself stay with the evaluator, for scoring. A causal-LM
run (:func:`simulate_lm_training`) keeps each step's token ids and loss mask the same way, for the response attack.

Sits above the roles (it imports the customer, the vendor and the transport); nothing in ``roles/`` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from splitpriv.contract import Message


@dataclass
class TrainingRun:
    """A finished run: ``messages`` = ``[(direction, message), ...]`` as they crossed the wire (what the vendor
    saw and sent); ``labels_per_step`` and ``customer`` are the evaluator's (truth, CTI set, label randomisation)."""

    messages: list[tuple[str, Message]] = field(default_factory=list)
    labels_per_step: list[torch.Tensor] = field(default_factory=list)
    customer: object = None
    targets_per_step: list[tuple] = field(default_factory=list)  # causal LM: (ids, attention mask, loss mask)
    scores: dict | None = None  # causal LM: the trained split model's held-out loss and perplexity, when asked

    def record(self, direction: str, message: Message) -> None:
        """The transport's ``tap``."""
        self.messages.append((direction, message))


def simulate_training(texts: Sequence[str], labels: Sequence[int], *, num_labels: int, head: str = "vendor",
                      n_bottom_layers: int = 0, privacy=None, method: str = "lora", batch_size: int = 32,
                      epochs: int = 1, seed: int = 0, max_length: int = 64, model=None, progress: bool = False,
                      vendor=None) -> TrainingRun:
    """Train a real :class:`~splitpriv.roles.customer.Customer` against a real
    :class:`~splitpriv.roles.vendor.Vendor` (``vendor``: one already loaded, else ``Vendor(model)``) through
    :class:`~splitpriv.transport.inprocess.InProcessTransport`, recording every message. The customer's noise seed
    is derived from ``seed`` (an experiment fixes it; in real use it is secret)."""
    from splitpriv.batching import num_steps, training_order
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.seeding import derive_seed
    from splitpriv.transport.inprocess import InProcessTransport

    privacy = privacy if privacy is not None else PrivacyConfig()
    vendor = vendor if vendor is not None else Vendor(model)
    run = TrainingRun()
    transport = InProcessTransport(vendor, tap=run.record)
    n = len(texts)
    session = SessionConfig(n_bottom_layers=n_bottom_layers, num_labels=num_labels, tuning={"method": method},
                            total_steps=num_steps(n, batch_size, epochs), seed=seed, head=head)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, max_length=max_length, seed=seed,
                        noise_seed=derive_seed(seed, "customer-noise") % (2**62))
    run.customer = Customer.open(transport, session, privacy, train)
    try:
        run.customer.fit(list(texts), list(labels), progress=progress)
    finally:
        transport.close()
    y = torch.as_tensor(list(labels), dtype=torch.long)
    run.labels_per_step = [y[index] for _, _, index in training_order(n, batch_size, epochs, seed)]
    return run


def simulate_lm_training(examples, *, n_bottom_layers: int = 0, n_tail_layers: int = 0, privacy=None,
                         method: str = "lora", batch_size: int = 8, epochs: int = 1, seed: int = 0,
                         max_length: int = 256, model=None, progress: bool = False, vendor=None,
                         eval_examples=None) -> TrainingRun:
    """:func:`simulate_training` for the causal-LM task: a customer holding bottom (k blocks) and tail (j blocks + final
    norm + LM head) trains on encoded ``examples`` (:class:`~splitpriv.data.instructions.LMExample`); the transcript
    carries the middle's outputs and the gradients w.r.t. them. ``targets_per_step`` (truth, for scoring): each
    step's ``(input_ids, attention_mask, loss_mask)`` as the customer collated them. ``eval_examples``: also score the
    trained split model on them (``scores``: loss and perplexity through the vendor) before the session closes."""
    from splitpriv.batching import num_steps, training_order
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.seeding import derive_seed
    from splitpriv.tasks.causal_lm import collate_lm
    from splitpriv.transport.inprocess import InProcessTransport

    vendor = vendor if vendor is not None else Vendor(model)
    run = TrainingRun()
    transport = InProcessTransport(vendor, tap=run.record)
    n = len(examples)
    session = SessionConfig(task="causal-lm", n_bottom_layers=n_bottom_layers, n_tail_layers=n_tail_layers,
                            tuning={"method": method}, total_steps=num_steps(n, batch_size, epochs), seed=seed)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, max_length=max_length, seed=seed,
                        noise_seed=derive_seed(seed, "customer-noise") % (2**62))
    run.customer = Customer.open(transport, session, privacy if privacy is not None else PrivacyConfig(), train)
    try:
        run.customer.fit(list(examples), progress=progress)
        if eval_examples is not None:
            run.scores = run.customer.perplexity(list(eval_examples))
    finally:
        transport.close()
    pad = run.customer.tokenizer.pad_token_id
    for _, _, index in training_order(n, batch_size, epochs, seed):
        ids, mask, targets = collate_lm(examples, index, pad)
        run.targets_per_step.append((ids, mask, targets * mask))
    return run
