"""The customer's journal: enough of its state, written before each forward is sent, to resume a run after either
side is killed without handing the vendor a second, independent noisy copy of anything it has already seen.

The noise is the only randomness of a frozen-bottom customer: its privatized vectors are a deterministic function
of the noise generator's state (and, with ``noise="once"``, of the vectors already drawn for each sentence). So the
journal keeps, for every step ``s``, the generator's state right after step ``s`` was privatized and the vectors of
the sentences first privatized in step ``s`` (``DIR/customer/journal/step-<s>.safetensors``, written atomically
*before* the forward leaves), plus the state before the first step and the labels used for the loss (label DP
draws them once). Resuming after the vendor's completed step ``c`` restores the state of step ``c`` and replays
steps ``c + 1, ...``: step ``c + 1``'s vectors are bit for bit the ones the vendor may already hold, even with
OS-drawn noise. The losses of completed steps are kept too (``losses.json``).

Scope: a frozen bottom and a vendor-held head (a trained bottom or a customer-held head would need its weights and
optimizer at every step); anything else is refused by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

START, LOSSES = "start.safetensors", "losses.json"


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    """``directory``'s journal of one customer's training (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._known: set[int] = set()

    @staticmethod
    def check(customer) -> None:
        if customer.train_config.bottom != "frozen" or customer.head is not None:
            raise ValueError("a resumable run needs a frozen bottom and the vendor-held head (--bottom frozen "
                             "--head vendor): the journal does not hold trained weights")

    def start(self, customer, labels: torch.Tensor) -> torch.Tensor:
        """Record the state before the first step and the loss labels; on a resumed run, return the recorded
        labels (label DP's draw is not repeated)."""
        path = self.directory / START
        if path.is_file():
            from safetensors.torch import load_file

            return load_file(str(path))["labels"]
        _write(path, {"rng": customer.noise.get_state(), "labels": labels})
        return labels

    def record(self, step: int, customer, index: torch.Tensor | None) -> None:
        """After step ``step`` is privatized, before its forward is sent."""
        tensors = {"rng": customer.noise.get_state()}
        if index is not None and customer.privacy.noise == "once":
            new = [int(i) for i in index.tolist() if int(i) not in self._known and int(i) in customer._cache]
            tensors.update({f"z.{i}": customer._cache[i] for i in new})
            self._known.update(new)
        _write(self.directory / f"step-{step:08d}.safetensors", tensors)

    def loss(self, step: int, value: float) -> None:
        losses = self.losses()
        losses[str(step)] = value
        tmp = self.directory / f".{LOSSES}.tmp"
        tmp.write_text(json.dumps(losses))
        os.replace(tmp, self.directory / LOSSES)

    def losses(self) -> dict[str, float]:
        path = self.directory / LOSSES
        return json.loads(path.read_text()) if path.is_file() else {}

    def restore(self, customer, completed: int) -> None:
        """Put ``customer``'s noise generator and noise-once cache where they were after step ``completed``."""
        from safetensors.torch import load_file

        start = self.directory / START
        if not start.is_file():
            raise FileNotFoundError(f"{self.directory} holds no journal ({START}): this run cannot be resumed")
        state = load_file(str(start))["rng"]
        for step in range(1, completed + 1):
            path = self.directory / f"step-{step:08d}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"the vendor completed step {completed} but the journal lacks step {step}")
            tensors = load_file(str(path))
            state = tensors.pop("rng")
            for name, z in tensors.items():
                customer._cache[int(name.split(".", 1)[1])] = z
                self._known.add(int(name.split(".", 1)[1]))
        customer.noise.set_state(state)


__all__ = ["Journal"]
