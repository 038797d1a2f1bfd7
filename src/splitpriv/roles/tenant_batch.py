"""Many tenants in one forward: predicts of different LoRA sessions that arrive together run as one batch of the
shared base top, each row with its own session's adapter.

Maths: a LoRA session's top computes, at every adapted linear layer, ``W x + (α/r) B_s A_s x``, and its head
``h_s``. Rows of sessions with the same base (label count, split, LoRA shape) share ``W``: :class:`BatchTop` computes
``W X`` once for the whole batch and adds each row's own ``B_s A_s`` delta, read from the session's own tensors at
each batch (so a training step is seen by the next batch); a session's head and privatizer up-projection run on its
own rows only.
Per row, the result equals the session's unbatched predict up to float32 summation order: rows are right-padded to
the batch's longest sequence and padding is masked out of attention.

Scheduling: the first request of a group that finds no batch running leads one with everything queued (FIFO,
within ``max_rows`` and the vendor's per-request cost caps); requests that arrive meanwhile wait, each on its own
event, and the head of the queue leads the next batch.
Before it runs, it waits up to ``max_wait`` (5 ms) for the group's other recently active sessions to queue their
next request; a lone customer never waits. (Waiting longer formed larger batches here but no more throughput: on
a CPU a row costs about the same in a batch of 8 as in one of 16.) Each session's lock is held while its rows are
computed (sorted lock order; a session belongs to one group), so a batch never sees a half-applied optimizer step.

Threat model: batching changes nothing a tenant can observe but timing; a row's logits depend only on its own
session's weights and its own representations.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from splitpriv.limits import check_int, request_cost
from splitpriv.protocol import Outputs, PredictRequest
from splitpriv.roles.session import VendorSession, check_representations
from splitpriv.tuning.base import share_frozen_copy
from splitpriv.tuning.lora import LoRA

ACTIVE_WINDOW = 1.0  # seconds: a session that sent a predict this recently is expected to send another
MAX_GROUPS = 64  # batch tops kept (least recently used first out): callers choosing odd configs cannot grow it


def group_key(session: VendorSession) -> str | None:
    """The batch group of ``session`` (sessions that can share a forward), or None when its predicts run alone:
    only LoRA sessions with a vendor-held classification head and no vendor-side denoising batch."""
    config, tuned = session.config, session.tuned
    if (not isinstance(tuned.config, LoRA) or tuned.peft_model is None or config.head != "vendor"
            or config.denoise != "none" or config.causal):
        return None
    return json.dumps([config.num_labels, config.n_bottom_layers, tuned.config.to_dict(), session.d_model],
                      sort_keys=True)


class BatchTop:
    """One group's shared top: the frozen base blocks, with a forward hook on every LoRA-adapted linear layer that
    adds each row's own ``(α/r) B_s A_s x`` (gathered per row and applied with two batched matmuls).

    Written by hand because ``peft``'s mixed-adapter batches (``adapter_names=``) run every adapter's sub-batch
    separately at every layer, a loop of small ops that cost this CPU more than the batch saved when tried, and
    the batched-gather kernels of multi-LoRA servers (Punica, S-LoRA) are GPU-only. The session's tensors are read
    at each batch, never copied, so nothing per session lives here and a training step is seen by the next batch."""

    def __init__(self, template: VendorSession):
        from peft.tuners.lora import LoraLayer

        self.module = share_frozen_copy(template.parts.top)
        self.module.privatizer_up = None  # each session lifts its own rows (its up-projection is trained per session)
        self.module.eval()
        self.paths = [n for n, m in template.tuned.module.named_modules() if isinstance(m, LoraLayer)]
        self._rows = None  # during a batch: {path: (A [rows, r, d_in], B [rows, d_out, r], scale [rows])}
        for path in self.paths:
            self.module.get_submodule(path).register_forward_hook(self._hook(path))

    def _hook(self, path: str):
        def add_delta(module, inputs, output):
            if self._rows is None:
                return output
            a, b, scale = self._rows[path]
            delta = torch.bmm(torch.bmm(inputs[0], a.transpose(1, 2)), b.transpose(1, 2))
            return output + scale[:, None, None] * delta

        return add_delta

    def _gather(self, sessions: list[VendorSession], index: torch.Tensor) -> dict:
        rows = {}
        for path in self.paths:
            layers = [s.tuned.module.get_submodule(path) for s in sessions]
            a = torch.stack([layer.lora_A["default"].weight for layer in layers])
            b = torch.stack([layer.lora_B["default"].weight for layer in layers])
            scale = torch.tensor([float(layer.scaling["default"]) for layer in layers])
            rows[path] = (a[index], b[index], scale[index])
        return rows

    def __call__(self, items: list[_Item]) -> list[torch.Tensor]:
        """The logits of every item's rows, each through its own session's adapter and head."""
        length = max(item.hidden.shape[1] for item in items)
        sessions = list({id(i.session): i.session for i in items}.values())
        slot = {id(s): k for k, s in enumerate(sessions)}
        hidden, masks, index = [], [], []
        for item in items:
            top = item.session.tuned.module
            x = item.hidden if top.privatizer_up is None else top.privatizer_up(item.hidden)
            pad = length - x.shape[1]
            hidden.append(torch.nn.functional.pad(x, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(item.mask, (0, pad)))
            index += [slot[id(item.session)]] * x.shape[0]
        self._rows = self._gather(sessions, torch.tensor(index))
        try:
            last = self.module.encode(torch.cat(hidden), torch.cat(masks))
        finally:
            self._rows = None
        out, row = [], 0
        for item, m in zip(items, masks):
            b = m.shape[0]
            out.append(item.session.tuned.module.classify(last[row:row + b], m))
            row += b
        return out


@dataclass
class _Item:
    session: VendorSession
    hidden: torch.Tensor
    mask: torch.Tensor
    arrived: float = field(default_factory=time.monotonic)
    wake: threading.Event = field(default_factory=threading.Event)  # set when done, or when it is to lead a batch
    done: bool = False
    result: Outputs | None = None
    error: BaseException | None = None


@dataclass
class _Group:
    top: BatchTop
    arrivals: threading.Condition  # the leader collecting a batch waits on it; every arrival notifies it
    queue: list[_Item] = field(default_factory=list)
    busy: bool = False  # a leader is collecting or running a batch (the queue is empty whenever it is False)
    seen: dict = field(default_factory=dict)  # session id -> when its last request arrived


class TenantBatcher:
    """Runs the predicts of a vendor's LoRA sessions in multi-tenant batches (see the module docstring).
    ``max_rows``: sequences per batch; the vendor's ``limits`` bound each batch's batch × T and batch × T² too;
    ``max_wait``: seconds a batch waits for its group's active sessions to queue (see the module docstring)."""

    def __init__(self, limits, max_rows: int = 64, max_wait: float = 0.005):
        check_int("max_rows", max_rows, 1, 2**31)
        if not 0 <= max_wait <= 1:
            raise ValueError(f"max_wait must be in [0, 1] seconds, got {max_wait!r}")
        self.limits, self.max_rows, self.max_wait = limits, max_rows, max_wait
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._lock = threading.Lock()
        self.batches = self.rows = 0  # counters: how many batches ran and how many sequences they held

    def predict(self, session: VendorSession, req: PredictRequest) -> Outputs:
        """``session.predict(req)``, in a batch with other sessions' predicts when its group allows."""
        key = group_key(session)
        if key is None:
            return session.predict(req)
        hidden, mask = check_representations(req.hidden, req.attention_mask, session.d_model, session.max_tokens,
                                             session.limits)
        item, lead = _Item(session, hidden, mask), False
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(BatchTop(session), threading.Condition(self._lock))
                excess = max(0, len(self._groups) - MAX_GROUPS)
                for old in [k for k, g in self._groups.items() if not g.busy][:excess]:
                    del self._groups[old]
            self._groups.move_to_end(key)
            group.queue.append(item)
            group.seen[session.session_id] = item.arrived
            lead, group.busy = not group.busy, True
            group.arrivals.notify()
        if not lead:
            item.wake.wait()
        if not item.done:  # its turn to lead: it heads the queue, so the batch it runs holds it
            try:
                with self._lock:
                    self._collect(group)
                    batch = self._take(group)
                self._run(group.top, batch)
            finally:
                with self._lock:  # hand over to the next queued request, or stand down with the queue empty
                    if group.queue:
                        group.queue[0].wake.set()
                    else:
                        group.busy = False
        if item.error is not None:
            raise item.error
        return item.result

    def _collect(self, group: _Group) -> None:
        """Wait up to ``max_wait`` s for every session of the group active in the last second (that is not queued
        already) to send its next request, or until ``max_rows`` rows are queued. Customers in a closed loop (send,
        wait, send again) then share one batch instead of alternating between two half batches; a lone customer,
        or one whose neighbours are all queued, never waits."""
        now = time.monotonic()
        for sid in [sid for sid, t in group.seen.items() if now - t > ACTIVE_WINDOW]:
            del group.seen[sid]
        deadline = now + self.max_wait
        while (sum(i.hidden.shape[0] for i in group.queue) < self.max_rows and time.monotonic() < deadline
               and not set(group.seen) <= {i.session.session_id for i in group.queue}):
            group.arrivals.wait(deadline - time.monotonic())

    def _take(self, group: _Group) -> list[_Item]:
        """The queue's longest FIFO prefix within ``max_rows`` and the per-request cost caps (at least one item)."""
        taken, rows, length = [], 0, 0
        for item in group.queue:
            b, t = item.hidden.shape[:2]
            if taken and (rows + b > self.max_rows or request_cost(
                    rows + b, max(length, t), item.hidden.shape[2], max_attention_cost=self.limits.max_attention_cost,
                    max_tokens=self.limits.max_tokens_per_request)):
                break
            taken.append(item)
            rows, length = rows + b, max(length, t)
        del group.queue[:len(taken)]
        return taken

    def _run(self, top: BatchTop, batch: list[_Item]) -> None:
        sessions = sorted({id(i.session): i.session for i in batch}.values(), key=lambda s: s.session_id)
        held = []
        try:
            for s in sessions:
                s.lock.acquire()
                held.append(s)
            live = []
            for item in batch:
                try:
                    item.session.check_open()
                    live.append(item)
                except Exception as exc:  # noqa: BLE001 - one closed session fails its own request only
                    item.error = exc
            if live:
                with torch.no_grad():
                    for s in {id(i.session): i.session for i in live}.values():
                        s.tuned.module.eval()
                    lone = live[0].session.tuned.module if len(live) == 1 else None  # no mixing: its own top
                    logits = top(live) if lone is None else [lone(live[0].hidden, live[0].mask)]
                for item, out in zip(live, logits):
                    item.result = Outputs(step=item.session.completed_step, outputs=out)
                self.batches, self.rows = self.batches + 1, self.rows + sum(i.hidden.shape[0] for i in live)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error, none is left blocked
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = exc
        finally:
            for s in held:
                s.lock.release()
            for item in batch:
                item.done = True
                item.wake.set()


__all__ = ["BatchTop", "TenantBatcher", "group_key"]
