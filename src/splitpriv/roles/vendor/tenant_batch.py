"""Many tenants in one forward: predicts of different LoRA sessions that arrive together run as one batch of the
shared base top, each row with its own session's adapter.

Maths: a LoRA session's top computes, at every adapted linear layer, ``W x + (α/r) B_s A_s x``, and its head
``h_s``. Rows of sessions with the same base (label count, split, LoRA shape) share ``W``: :class:`BatchTop` computes
``W X`` once for the whole batch and adds each row's own ``B_s A_s`` delta, read from the session's own tensors at
each batch (so a training step is seen by the next batch); a session's head and privatizer up-projection run on its
own rows only.
Per row, the result equals the session's unbatched predict up to float32 summation order: rows are packed into
shared sequences with a block-diagonal mask where the family allows (see :class:`BatchTop`), else right-padded to
the batch's longest row, and padding is masked out of attention.

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

from splitpriv.contract.limits import check_int, request_cost
from splitpriv.models import BlockInputs
from splitpriv.contract import ForwardRequest, Outputs, PredictRequest
from splitpriv.roles.vendor.session import VendorSession, check_representations
from splitpriv.roles.vendor.training_batch import BACKWARD_WAIT, run_training
from splitpriv.tuning.base import share_frozen_copy
from splitpriv.tuning.lora import LoRA

ACTIVE_WINDOW = 1.0  # seconds: a session that sent a predict this recently is expected to send another
TRAIN_ACTIVE_WINDOW = 5.0  # the same for training forwards (a step's round trip is longer)
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


def train_group_key(session: VendorSession) -> str | None:
    """The training batch group of ``session``, or None when its training forwards run alone: a predict group's
    session that trains without dropout (:mod:`splitpriv.roles.vendor.training_batch` says why)."""
    key = group_key(session)
    return None if key is None or session.config.dropout else "train:" + key


class BatchTop:
    """One group's shared top: the frozen base blocks, with a forward hook on every LoRA-adapted linear layer that
    adds each token's own session's ``(α/r) B_s A_s x`` (tokens gathered by session, two batched matmuls, scattered
    back).

    Written by hand because ``peft``'s mixed-adapter batches (``adapter_names=``) run every adapter's sub-batch
    separately at every layer, a loop of small ops that cost this CPU more than the batch saved when tried, and
    the batched-gather kernels of multi-LoRA servers (Punica, S-LoRA) are GPU-only. The session's tensors are read
    at each batch, never copied, so nothing per session lives here and a training step is seen by the next batch.

    Packing: in a bidirectional family without rotary positions (BERT, RoBERTa; positions were added in the
    customer's embeddings) a block sees a token only through its row's attention, so rows are packed first-fit
    decreasing into sequences as long as the batch's longest row, with a block-diagonal mask (a token attends to
    the real tokens of its own row only). Per layer, packed attention costs at most what the padded batch would
    (no more sequences than rows, none longer), and the padding a batch of unequal sentences would compute is
    gone (16 single-sentence SST-2 predicts: 81.5 ms padded, 72.9 ms packed; ``benchmarks/tenant_batching.py``). Other
    families (causal attention, rotary positions, a 2-D eager mask), and ``pack=False``, are right-padded to the
    longest row."""

    def __init__(self, template: VendorSession, pack: bool = True):
        from peft.tuners.lora import LoraLayer

        self.module = share_frozen_copy(template.parts.top)
        self.module.privatizer_up = None  # each session lifts its own rows (its up-projection is trained per session)
        self.module.eval()
        family = self.module.family
        self.packs = pack and not family.causal and family.rotary is None and not family.eager_mask_2d
        self.paths = [n for n, m in template.tuned.module.named_modules() if isinstance(m, LoraLayer)]
        self._rows = None  # during a batch: {path: (A [S, r, d_in], B [S, d_out, r], scale [S])} and the gathers
        for path in self.paths:
            self.module.get_submodule(path).register_forward_hook(self._hook(path))

    def _hook(self, path: str):
        def add_delta(module, inputs, output):
            if self._rows is None:
                return output
            (a, b, scale), (gather, valid) = self._rows[path], self._rows["tokens"]
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[gather]  # [S, M, d_in]: session s's tokens (then filler)
            delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * scale[:, None, None]
            output.view(-1, output.shape[-1]).index_add_(0, gather[valid], delta[valid])  # the linear keeps no output
            return output

        return add_delta

    def _gather(self, sessions: list[VendorSession], slot: torch.Tensor) -> dict:
        """Every adapted layer's stacked session tensors, and which flat token positions belong to each session
        (``slot``: each position's session index, -1 for filler)."""
        rows = {}
        for path in self.paths:
            layers = [s.tuned.module.get_submodule(path) for s in sessions]
            rows[path] = (torch.stack([layer.lora_A["default"].weight for layer in layers]),
                          torch.stack([layer.lora_B["default"].weight for layer in layers]),
                          torch.tensor([float(layer.scaling["default"]) for layer in layers]))
        positions = [torch.nonzero(slot == k).squeeze(1) for k in range(len(sessions))]
        longest = max(len(p) for p in positions)
        gather = torch.zeros((len(sessions), longest), dtype=torch.long)  # filler: any position, its delta is dropped
        valid = torch.zeros((len(sessions), longest), dtype=torch.bool)
        for k, p in enumerate(positions):
            gather[k, :len(p)], valid[k, :len(p)] = p, True
        rows["tokens"] = (gather, valid)
        return rows

    def __call__(self, items: list[_Item]) -> list[torch.Tensor]:
        """The logits of every item's rows, each through its own session's adapter and head."""
        sessions = list({id(i.session): i.session for i in items}.values())
        slot_of = {id(s): k for k, s in enumerate(sessions)}
        rows = []  # (hidden [T, d] lifted by its session, mask [T], session index)
        for item in items:
            top = item.session.tuned.module
            x = item.hidden if top.privatizer_up is None else top.privatizer_up(item.hidden)
            rows += [(x[j], item.mask[j], slot_of[id(item.session)]) for j in range(x.shape[0])]
        lengths = [len(m) for _, m, _ in rows]
        places, n_seq, length = _pack(lengths) if self.packs else _pad(lengths)
        hidden = rows[0][0].new_zeros(n_seq, length, rows[0][0].shape[-1])
        mask = torch.zeros(n_seq, length, dtype=torch.long)
        owner = torch.full((n_seq, length), -1, dtype=torch.long)  # row index of each position, -1: filler
        for r, ((x, m, _), (seq, at)) in enumerate(zip(rows, places)):
            hidden[seq, at:at + len(m)], mask[seq, at:at + len(m)], owner[seq, at:at + len(m)] = x, m, r
        session_of_row = torch.tensor([k for _, _, k in rows])
        slot = torch.where(owner >= 0, session_of_row[owner.clamp(min=0)], -1)  # each position's session, -1: filler
        self._rows = self._gather(sessions, slot.reshape(-1))
        try:
            if self.packs:
                keys = (mask == 1) | (owner < 0)  # filler attends to filler only, so no query row is empty
                allowed = (owner[:, :, None] == owner[:, None, :]) & keys[:, None, :]
                additive = (~allowed)[:, None].to(hidden.dtype) * torch.finfo(hidden.dtype).min
                last = self.module.encode(hidden, None, block_inputs=BlockInputs(additive))
            else:
                last = self.module.encode(hidden, mask)
        finally:
            self._rows = None
        out, r = [], 0
        for item in items:
            b, t = item.mask.shape
            own = torch.stack([last[seq, at:at + t] for seq, at in places[r:r + b]])
            out.append(item.session.tuned.module.classify(own, item.mask))
            r += b
        return out


def _pack(lengths: list[int]) -> tuple[list[tuple[int, int]], int, int]:
    """First-fit decreasing: each row's (sequence, offset) in sequences of the longest row's length."""
    capacity, free, places = max(lengths), [], [None] * len(lengths)
    for r in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        seq = next((s for s, room in enumerate(free) if room >= lengths[r]), len(free))
        if seq == len(free):
            free.append(capacity)
        places[r] = (seq, capacity - free[seq])
        free[seq] -= lengths[r]
    return places, len(free), capacity


def _pad(lengths: list[int]) -> tuple[list[tuple[int, int]], int, int]:
    """One right-padded sequence per row."""
    return [(r, 0) for r in range(len(lengths))], len(lengths), max(lengths)


@dataclass
class _Item:
    session: VendorSession
    hidden: torch.Tensor
    mask: torch.Tensor
    step: int | None = None  # a training forward's step (None: a predict)
    arrived: float = field(default_factory=time.monotonic)
    wake: threading.Event = field(default_factory=threading.Event)  # set when done, or when it is to lead a batch
    done: bool = False
    result: Outputs | None = None
    error: BaseException | None = None


@dataclass
class _Group:
    top: BatchTop
    arrivals: threading.Condition  # the leader collecting a batch waits on it; every arrival notifies it
    run: object  # (top, items) -> None: computes every item's result or error, its sessions' locks held
    active: float  # seconds: a session that sent a request this recently is expected to send another
    wait: float  # seconds a leader waits for the group's active sessions to queue
    queue: list[_Item] = field(default_factory=list)
    busy: bool = False  # a leader is collecting or running a batch (the queue is empty whenever it is False)
    seen: dict = field(default_factory=dict)  # session id -> when its last request arrived


class TenantBatcher:
    """Runs the predicts of a vendor's LoRA sessions in multi-tenant batches (see the module docstring).
    ``max_rows``: sequences per batch; the vendor's ``limits`` bound each batch's batch × T and batch × T² too;
    ``max_wait``: seconds a batch waits for its group's active sessions to queue (see the module docstring)."""

    def __init__(self, limits, max_rows: int = 64, max_wait: float = 0.005, *, train: bool = False,
                 train_wait: float = 0.05, backward_wait: float = BACKWARD_WAIT):
        check_int("max_rows", max_rows, 1, 2**31)
        for name, wait in (("max_wait", max_wait), ("train_wait", train_wait), ("backward_wait", backward_wait)):
            if not 0 <= wait <= 1:
                raise ValueError(f"{name} must be in [0, 1] seconds, got {wait!r}")
        self.limits, self.max_rows, self.max_wait = limits, max_rows, max_wait
        self.train, self.train_wait, self.backward_wait = train, train_wait, backward_wait
        self.train_batches = self.train_rows = 0  # counters: shared training forwards (2+ sessions) and their rows
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._lock = threading.Lock()
        self.batches = self.rows = 0  # counters: how many batches ran and how many sequences they held

    def predict(self, session: VendorSession, req: PredictRequest) -> Outputs:
        """``session.predict(req)``, in a batch with other sessions' predicts when its group allows."""
        key = group_key(session)
        if key is None:
            return session.predict(req)
        return self._submit(key, session, req, None)

    def forward(self, session: VendorSession, req: ForwardRequest) -> Outputs:
        """``session.forward(req)``, in a batch with other sessions' training forwards when its group allows
        (:mod:`splitpriv.roles.vendor.training_batch`)."""
        key = train_group_key(session) if self.train else None
        if key is None:
            return session.forward(req)
        cached = session.repeated_forward(req.step)
        if cached is not None:
            return cached
        return self._submit(key, session, req, req.step)

    def _submit(self, key: str, session: VendorSession, req, step: int | None) -> Outputs:
        """Queue one request (a predict, or the training forward of ``step``) in ``key``'s group."""
        hidden, mask = check_representations(req.hidden, req.attention_mask, session.d_model, session.max_tokens,
                                             session.limits)
        item, lead = _Item(session, hidden, mask, step), False
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                schedule = ((self._run, ACTIVE_WINDOW, self.max_wait) if step is None
                            else (self._run_training, TRAIN_ACTIVE_WINDOW, self.train_wait))
                group = self._groups[key] = _Group(BatchTop(session), threading.Condition(self._lock), *schedule)
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
                self._locked(group, batch)
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
        """Wait up to the group's wait (``max_wait``; ``train_wait`` for training forwards) for every session of the
        group active within its window (that is not queued already) to send its next request, or until
        ``max_rows`` rows are queued. Customers in a closed loop (send, wait, send again) then share one batch
        instead of alternating between two half batches; a lone customer, or one whose neighbours are all queued,
        never waits."""
        now = time.monotonic()
        for sid in [sid for sid, t in group.seen.items() if now - t > group.active]:
            del group.seen[sid]
        deadline = now + group.wait
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

    def _locked(self, group: _Group, batch: list[_Item]) -> None:
        """``group.run`` with every session of ``batch`` locked (in session-id order); every item ends done with a
        result or an error, none is left blocked."""
        sessions = sorted({id(i.session): i.session for i in batch}.values(), key=lambda s: s.session_id)
        held = []
        try:
            for s in sessions:
                s.lock.acquire()
                held.append(s)
            group.run(group.top, batch)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = exc
        finally:
            for s in held:
                s.lock.release()
            for item in batch:
                item.done = True
                item.wake.set()

    def _run(self, top: BatchTop, batch: list[_Item]) -> None:
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

    def _run_training(self, top: BatchTop, batch: list[_Item]) -> None:
        rows = run_training(top, batch, self.backward_wait)
        if rows:
            self.train_batches, self.train_rows = self.train_batches + 1, self.train_rows + rows


__all__ = ["BatchTop", "TenantBatcher", "group_key", "train_group_key"]
