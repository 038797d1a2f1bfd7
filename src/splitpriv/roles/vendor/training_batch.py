"""Many tenants in one training forward, and one backward for the batch.

Forward: training forwards of LoRA sessions of one batch group
(:func:`~splitpriv.roles.vendor.tenant_batch.train_group_key`) that arrive together run as one
:class:`~splitpriv.roles.vendor.tenant_batch.BatchTop` forward with autograd on: each
token's ``(α/r) B_s A_s x`` is its own session's, so session ``s``'s outputs, and the gradients of its weights and
of its representations, are functions of its own rows and weights only, as in its lone step (float32 summation
order aside; ``tests/roles/test_training_batch.py``).

Backward: :class:`SharedBackward` collects the members' ``grad_outputs`` and runs one ``autograd.backward`` of the
batch graph, accumulating into each member's own leaves only (``inputs=``), then every member steps its own
optimizer. A member whose gradient has not arrived within ``wait`` seconds of the first one's is left out of that
round: the graph is kept, and when its gradient comes it runs a backward of its own outputs alone (correct, at a
whole batch's backward cost). So a slow or hostile member delays the others by at most ``wait`` per step, and
costs the vendor at most one extra backward per member. The kept graph is the whole batch's, so from then on the
member's pending forward is charged the batch's cost against the vendor's pending-cost cap
(``VendorSession.pending_cost``); a member that never answers is dropped with its pending forward by the TTL
reaper, which frees the graph.

Which sessions: only those that train without dropout (``SessionConfig.dropout=False``). A session's dropout
masks are drawn from torch's global RNG reseeded for its step (:func:`splitpriv.seeding.step_rng`), in the shape
of its own batch and, for attention, inside the fused attention kernel; drawing the same masks for each member's
rows inside a shared forward would need an attention of its own per member, which is what a batch exists to avoid.
Sessions with dropout train alone, so their RNG streams stay their own.

Cost: on a 2-core CPU a training batch of 8 sentences already keeps the cores busy, so the top's forward + backward
of 64 rows costs about the same as one multi-tenant batch as it does as 8 batches of 8 (0.91x-1.03x), and 8
customers in lock step got 0.64x-0.78x the steps/s they get stepping alone (the cores idle while a batch waits for its
members' gradients; ``benchmarks/training_tenants.py``). Hence off by default (``Vendor(batch_train=False)``):
it is for hardware where a small batch leaves the device idle, such as a GPU, which was not measured here.

Threat model: as for predict batches, a member observes nothing of another but timing, and its gradient reaches
no other member's leaves: in a packed sequence another member's rows meet it only through masked attention
entries, whose weights are exact zeros, and a ``grad_outputs`` that is not finite or above the vendor's magnitude
cap is refused before it joins a round (``0 × Inf`` would be NaN). A member's gradient held back or refused costs
the others at most ``wait``.
"""

from __future__ import annotations

import threading
import time

import torch

from splitpriv.contract.errors import OutOfOrder
from splitpriv.roles.vendor.session import VendorSession, attention_units

BACKWARD_WAIT = 0.2  # seconds the first member's backward waits for the batch's others


class SharedBackward:
    """The backward of one multi-tenant training forward (see the module docstring). Each member's thread calls
    :meth:`backward` holding its session's lock, after zeroing its gradients; the call returns once the member's
    leaves hold their gradients."""

    def __init__(self, session_ids, wait: float = BACKWARD_WAIT, cost: int = 0):
        self.missing = set(session_ids)  # members whose gradient has not arrived
        self.cost = cost  # batch x T^2 summed over the members: what the batch's graph holds, in attention units
        self.wait = wait
        self.rounds = 0
        self._submitted: dict[str, tuple] = {}  # session id -> (outputs, grad, leaves)
        self._errors: dict[str, BaseException] = {}
        self._cond = threading.Condition()

    def leave(self, session_id: str) -> None:
        """``session_id`` will send no gradient (its forward was refused): nobody waits for it."""
        with self._cond:
            self.missing.discard(session_id)
            self._cond.notify_all()

    def backward(self, session: VendorSession, pending, grad: torch.Tensor) -> None:
        sid = session.session_id
        leaves = list(session.tuned.parameters()) + ([pending.hidden] if session.config.train_bottom else [])
        with self._cond:
            self._submitted[sid] = (pending.outputs, grad, leaves)
            self.missing.discard(sid)
            self._cond.notify_all()
            deadline = time.monotonic() + self.wait
            while sid in self._submitted and self.rounds == 0 and self.missing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if sid not in self._submitted:  # another member's round computed it
                error = self._errors.pop(sid, None)
                if error is not None:
                    raise error
                return
            members, self._submitted = self._submitted, {}
            self.rounds += 1
            try:
                torch.autograd.backward([m[0] for m in members.values()], [m[1] for m in members.values()],
                                        inputs=[leaf for m in members.values() for leaf in m[2]],
                                        retain_graph=bool(self.missing))
            except Exception as exc:  # noqa: BLE001 - every member of the round gets the error
                self._errors.update({k: exc for k in members if k != sid})
                raise
            finally:
                self._cond.notify_all()


def run_training(top, batch: list, wait: float = BACKWARD_WAIT) -> int:
    """Compute the training forwards of ``batch`` (items of :class:`~splitpriv.roles.vendor.tenant_batch.TenantBatcher`;
    the caller holds every item's session lock): each item gets its reply or its error. A retry gets its stored
    reply; a lone live item runs its session's own forward; a second item of a session already in the batch gets
    the first one's answer (same step) or :class:`OutOfOrder`. Returns how many rows ran in a shared forward (0:
    none did)."""
    live, first, shared_rows = [], {}, 0
    for item in batch:
        sid = item.session.session_id
        if sid in first:
            continue
        first[sid] = item
        try:
            item.result = item.session.admit_forward(item.step)
            if item.result is None:
                live.append(item)
        except Exception as exc:  # noqa: BLE001 - a refused forward fails its own request only
            item.error = exc
    if len(live) == 1:
        item = live[0]
        item.result = item.session.run_forward(item.step, item.hidden, item.mask)
    elif live:
        for item in live:
            item.session.tuned.module.eval()
            item.hidden.requires_grad_(item.session.config.train_bottom)
        cost = sum(attention_units(i.hidden.shape) for i in live)
        shared = SharedBackward([i.session.session_id for i in live], wait, cost)
        shared_rows = sum(i.hidden.shape[0] for i in live)
        for item, outputs in zip(live, top(live)):
            try:
                item.result = item.session.keep_forward(item.step, item.hidden, outputs, shared)
            except Exception as exc:  # noqa: BLE001 - non-finite outputs refuse that member's step only
                item.error = exc
                shared.leave(item.session.session_id)
    for item in batch:
        twin = first[item.session.session_id]
        if twin is not item:
            if item.step == twin.step:
                item.result, item.error = twin.result, twin.error
            else:
                item.error = OutOfOrder(f"forward for step {item.step} arrived with the forward of step {twin.step} "
                                        "of the same session: send one step at a time")
    return shared_rows


__all__ = ["BACKWARD_WAIT", "SharedBackward", "run_training"]
