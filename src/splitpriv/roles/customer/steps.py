"""What every customer step shares: the backward that resends its forward once, an optimizer step, a progress bar."""

from __future__ import annotations

import torch

from splitpriv.contract import BackwardRequest, ForwardRequest


def backward_resending(transport, forward: ForwardRequest, outputs, backward: BackwardRequest):
    """``transport.backward(backward)``; when the vendor no longer holds the step's forward (a restart, or its
    pending-forward TTL: 409) the *same* forward request is sent again, once (the same privatized vectors: no fresh
    noise for the vendor to average), and the backward follows it. The vendor's seeded forward gives the same
    outputs, so the gradient computed from the first answer still holds."""
    from splitpriv.contract.errors import OutOfOrder

    try:
        return transport.backward(backward)
    except OutOfOrder:
        again = transport.forward(forward)
        if not torch.equal(again.outputs, outputs.outputs):
            raise RuntimeError(f"the vendor answered the resent forward of step {forward.step} differently: its state "
                               "changed, so this step's gradient no longer applies") from None
        return transport.backward(backward)


def step_optimizer(optimizer, scheduler) -> None:
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
