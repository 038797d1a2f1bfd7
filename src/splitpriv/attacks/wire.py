"""What the vendor observes on the wire of a training run: the transcript of decoded messages, read into steps.

A transcript is ``[(direction, message), ...]`` in the order the messages crossed (``"to_vendor"`` /
``"to_customer"``), as the transport's ``tap`` sees them (:class:`splitpriv.simulation.TrainingRun` records one).
The vendor sent or received every one of them, so reading them takes nothing it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from splitpriv.contract import BackwardRequest, ForwardRequest, Message, Outputs, PredictRequest


@dataclass
class WireStep:
    """One training step as the vendor sees it."""

    step: int
    hidden: Tensor | None = None  # ForwardRequest.hidden: privatized representations [B, T, d]
    attention_mask: Tensor | None = None
    outputs: Tensor | None = None  # Outputs it returned: logits [B, C] or last hidden states [B, T, d]
    grad_outputs: Tensor | None = None  # BackwardRequest.grad_outputs: ∂L/∂outputs, same shape as outputs


@dataclass
class WireTap:
    """A transport ``tap``: keeps every training step's messages and the shape of every tensor that crossed
    (``crossings``: ``(direction, kind, field, shape)``)."""

    steps: dict[int, WireStep] = field(default_factory=dict)
    crossings: list[tuple[str, str, str, tuple[int, ...]]] = field(default_factory=list)
    _awaiting: int | None = None

    def __call__(self, direction: str, message: Message) -> None:
        for name in message.tensor_fields:
            value = getattr(message, name)
            if isinstance(value, Tensor):
                self.crossings.append((direction, message.kind, name, tuple(value.shape)))
        if isinstance(message, ForwardRequest):
            step = self.steps.setdefault(message.step, WireStep(message.step))
            step.hidden, step.attention_mask = message.hidden, message.attention_mask
            self._awaiting = message.step
        elif isinstance(message, PredictRequest):
            self._awaiting = None
        elif isinstance(message, Outputs) and direction == "to_customer":
            if self._awaiting is not None and message.step == self._awaiting:
                self.steps[message.step].outputs = message.outputs
            self._awaiting = None
        elif isinstance(message, BackwardRequest):
            self.steps.setdefault(message.step, WireStep(message.step)).grad_outputs = message.grad_outputs

    def observed(self) -> list[WireStep]:
        """Completed training steps (with a gradient), in step order."""
        return [self.steps[s] for s in sorted(self.steps) if self.steps[s].grad_outputs is not None]


def read_transcript(messages) -> WireTap:
    """A :class:`WireTap` fed a recorded transcript ``[(direction, message), ...]``."""
    tap = WireTap()
    for direction, message in messages:
        tap(direction, message)
    return tap
