"""One customer's session on the vendor: the per-session state machine and the checks on what it receives.

:class:`VendorSession` holds one customer's state: its tuned top (only its own trainable deltas), optimizer,
learning-rate schedule and the bookkeeping that makes a repeated step harmless. :func:`check_representations`
validates received representations at the boundary; :func:`check_tuning_size` refuses tuning parameters that
would only cost memory.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from splitpriv.contract import limits
from splitpriv.contract.errors import OutOfOrder, PayloadTooLarge, UnknownSession
from splitpriv.contract import (
    WIRE_DTYPES,
    BackwardRequest,
    BackwardResult,
    DecodeRequest,
    ForwardRequest,
    Outputs,
    PredictRequest,
    ProtocolError,
    SessionConfig,
)
from splitpriv.seeding import step_rng
from splitpriv.parts import SplitModel
from splitpriv.tuning import TunedTop

# Dropout (and LoRA's initialisation) draw from torch's process-global RNG, which ``step_rng`` reseeds and then
# restores. Two sessions doing that at once from two threads would draw from each other's streams, so a session's
# results would depend on its neighbours'. Every use of the global RNG on the vendor's side holds this lock (the
# forward passes of different sessions run one at a time; on CPU each one already uses every core).
RNG_LOCK = threading.RLock()


def token_hash(token: str) -> str:
    """What the vendor keeps of a session token (in memory and on disk): its sha256, hex."""
    return hashlib.sha256(str(token).encode()).hexdigest()


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost a vendor (see :mod:`splitpriv.contract.limits`): the largest coordinate magnitude of received
    tensors, batch × T² and batch × T per request, and how long (seconds; None: forever) a forward's autograd graph
    waits for its backward, and batch × T² summed over all pending forwards of the vendor."""

    max_abs_value: float = limits.MAX_ABS_VALUE
    max_attention_cost: int = limits.MAX_ATTENTION_COST
    max_tokens_per_request: int = limits.MAX_TOKENS_PER_REQUEST
    pending_ttl: float | None = 300.0
    max_pending_cost: int = limits.MAX_PENDING_COST  # batch x T^2 summed over every session's pending forward


DEFAULT_LIMITS = RequestLimits()


class ForwardExpired(OutOfOrder):
    """A backward whose forward waited longer than the vendor's pending-forward TTL: resend the forward."""


def attention_units(shape) -> int:
    """batch × T² of a ``[batch, T, d]`` forward: what its kept graph holds, the unit of the pending-cost cap."""
    return int(shape[0]) * int(shape[1]) ** 2


def check_magnitude(name: str, tensor: torch.Tensor, max_abs: float) -> None:
    """Refuse NaN, Inf and finite values above ``max_abs`` in magnitude (they overflow inside the top)."""
    if not bool(torch.isfinite(tensor).all()):
        raise ProtocolError(f"{name} contains NaN or Inf")
    largest = float(tensor.abs().max()) if tensor.numel() else 0.0
    if largest > max_abs:
        raise ProtocolError(f"{name} holds a value of magnitude {largest:.3g}, above this vendor's limit of "
                            f"|x| <= {max_abs:g} per coordinate")


def check_representations(hidden: torch.Tensor, attention_mask: torch.Tensor, d_model: int, max_tokens: int,
                          limits: RequestLimits = DEFAULT_LIMITS):
    """Validate received representations at the boundary; returns them as float32 and the mask as long."""
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in WIRE_DTYPES.values():
        raise ProtocolError(f"hidden must be a float tensor ({', '.join(WIRE_DTYPES)}), got {getattr(hidden, 'dtype', type(hidden))}")
    if hidden.dim() != 3 or hidden.shape[-1] != d_model:
        raise ProtocolError(f"hidden must have shape [batch, tokens, {d_model}], got {list(hidden.shape)}")
    if hidden.shape[0] < 1 or hidden.shape[1] < 1:
        raise ProtocolError(f"hidden is empty: shape {list(hidden.shape)}")
    if hidden.shape[1] > max_tokens:
        raise ProtocolError(f"{hidden.shape[1]} tokens exceed this model's maximum of {max_tokens}")
    too_costly = _request_cost(hidden.shape, limits)
    if too_costly:
        raise PayloadTooLarge(too_costly)
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ProtocolError(
            f"attention_mask shape {list(attention_mask.shape)} does not match hidden [batch, tokens] = "
            f"{list(hidden.shape[:2])}"
        )
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise ProtocolError(f"attention_mask must hold integers 0/1, got dtype {attention_mask.dtype}")
    mask = attention_mask.long()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ProtocolError("attention_mask must hold only 0 and 1")
    if not bool((mask.sum(dim=1) > 0).all()):
        raise ProtocolError("every sequence needs at least one real token (a row of the mask is all zeros)")
    check_magnitude("hidden", hidden, limits.max_abs_value)
    return hidden.float(), mask


def _request_cost(shape, limits: RequestLimits) -> str | None:
    from splitpriv.contract.limits import request_cost

    return request_cost(shape[0], shape[1], shape[2], max_attention_cost=limits.max_attention_cost,
                        max_tokens=limits.max_tokens_per_request)


def check_tuning_size(tuning, d_model: int) -> None:
    """Refuse tuning parameters that would only cost memory: a LoRA rank or adapter bottleneck above d."""
    from splitpriv.tuning import tuning_config

    config = tuning_config(tuning)
    for name in ("r", "bottleneck"):
        value = getattr(config, name, None)
        if value is not None and value > d_model:
            raise ValueError(f"{config.method} {name}={value} is above the model width d={d_model}")


def check_next_step(step: int, completed: int) -> None:
    """409 unless ``step`` is the forward that follows the session's last completed step."""
    if step != completed + 1:
        raise OutOfOrder(f"forward for step {step} is out of order: the session's last completed step is "
                         f"{completed}, so the next forward is step {completed + 1}")


@dataclass
class _Pending:
    step: int
    hidden: torch.Tensor
    outputs: torch.Tensor
    reply: Outputs
    shared: object = None  # SharedBackward: the forward ran in a multi-tenant batch, its backward joins the batch's
    created: float = field(default_factory=time.monotonic)


class VendorSession:
    """One customer's tuned top, optimizer and step bookkeeping.

    Steps are numbered 1, 2, ... A forward for step ``s`` must follow a completed step ``s - 1``; repeating the
    forward or backward of the latest step (a retry after a lost answer) returns the stored answer without
    computing or stepping the optimizer again.
    """

    def __init__(self, session_id: str, token: str | None, config: SessionConfig, parts: SplitModel, tuned: TunedTop,
                 *, token_sha256: str | None = None, projection=None, owner: str | None = None,
                 limits: RequestLimits = DEFAULT_LIMITS):
        from transformers import get_linear_schedule_with_warmup

        if (token is None) == (token_sha256 is None):
            raise ValueError("give a session either its token or the sha256 of it")
        self.session_id = session_id
        self.owner = owner  # the id of the API key that opened the session (None: an open vendor)
        self.limits = limits
        self.token_sha256 = token_sha256 or token_hash(token)
        self.config = config
        self.parts = parts
        self.tuned = tuned
        self.projection = projection  # TokenProjection when config.denoise != "none" (shared by the vendor's sessions)
        self.d_model = parts.top.input_width  # r with a privatizer: the width the session accepts
        self.max_tokens = int(getattr(parts.config, "max_position_embeddings", 512))
        self.optimizer = torch.optim.AdamW(tuned.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * config.total_steps), config.total_steps
        )
        self.completed_step = 0
        self.checkpointed_step: int | None = None
        self.checkpoint_path: Path | None = None
        self.closed = False
        self._pending: _Pending | None = None
        self.last_backward: BackwardResult | None = None
        self.expired: tuple[int, float] | None = None  # (step, age in s) of the last pending forward that expired
        self.last_used = time.monotonic()
        self.decode_cache = None  # causal LM: the middle's key/value cache of the one sequence being generated
        self.lock = threading.Lock()

    def check_token(self, token: str | None) -> bool:
        """Constant-time comparison of ``token``'s hash with the session's."""
        return bool(token) and hmac.compare_digest(self.token_sha256, token_hash(token))

    def check_open(self) -> None:
        if self.closed:
            raise UnknownSession(f"unknown or closed session {self.session_id!r}")

    def _run_top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            hidden = self.projection(hidden, mask)
        top = self.tuned.module
        if self.config.head == "customer":
            return top.encode(hidden, mask)
        return top(hidden, mask)

    def forward(self, req: ForwardRequest) -> Outputs:
        with self.lock:
            cached = self.admit_forward(req.step)
            if cached is not None:
                return cached
            hidden, mask = check_representations(req.hidden, req.attention_mask, self.d_model, self.max_tokens,
                                                 self.limits)
            return self.run_forward(req.step, hidden, mask)

    def run_forward(self, step: int, hidden: torch.Tensor, mask: torch.Tensor) -> Outputs:
        """The caller holds the lock and admitted ``step``: the session's own training forward, kept pending."""
        hidden.requires_grad_(self.config.train_bottom)
        self.tuned.module.train(self.config.dropout)
        with RNG_LOCK, step_rng(self.config.seed, "vendor", step):
            outputs = self._run_top(hidden, mask)
        return self.keep_forward(step, hidden, outputs)

    def admit_forward(self, step: int) -> Outputs | None:
        """The caller holds the lock: the stored reply when ``step`` repeats the pending forward, else None once
        ``step`` is checked to be the next one (:class:`OutOfOrder` if not)."""
        self.check_open()
        if self._pending is not None and step == self._pending.step:
            return self._pending.reply
        check_next_step(step, self.completed_step)
        return None

    def keep_forward(self, step: int, hidden: torch.Tensor, outputs: torch.Tensor, shared=None) -> Outputs:
        """The caller holds the lock: keep a computed forward (its graph) pending until its backward; ``shared``: the
        :class:`~splitpriv.roles.vendor.training_batch.SharedBackward` of the multi-tenant batch it was computed in."""
        if not bool(torch.isfinite(outputs).all()):
            del outputs
            raise ProtocolError(f"the top's outputs for step {step} are not finite (the inputs overflow it): "
                                "the step was refused and the session is unchanged")
        self.expired = None
        reply = Outputs(step=step, outputs=outputs.detach())
        self._pending = _Pending(step, hidden, outputs, reply, shared)
        return reply

    def backward(self, req: BackwardRequest) -> BackwardResult:
        with self.lock:
            self.check_open()
            if self.last_backward is not None and req.step == self.completed_step:
                return self.last_backward
            self._expire_if_old(time.monotonic())
            pending = self._pending
            if pending is None and self.expired is not None and self.expired[0] == req.step:
                raise ForwardExpired(
                    f"the forward of step {req.step} expired: it waited {self.expired[1]:.0f} s for its backward "
                    f"(this vendor keeps a pending forward {self.limits.pending_ttl:g} s) and its graph was freed; "
                    f"send the forward of step {req.step} again, then its backward")
            if pending is None or pending.step != req.step:
                raise OutOfOrder(f"backward for step {req.step} without its forward")
            grad = req.grad_outputs
            if not isinstance(grad, torch.Tensor) or grad.dtype not in WIRE_DTYPES.values():
                raise ProtocolError(f"grad_outputs must be a float tensor, got {getattr(grad, 'dtype', type(grad))}")
            if tuple(grad.shape) != tuple(pending.outputs.shape):
                raise ProtocolError(
                    f"grad_outputs shape {list(grad.shape)} does not match the outputs of step {req.step} "
                    f"{list(pending.outputs.shape)}"
                )
            check_magnitude("grad_outputs", grad, self.limits.max_abs_value)
            self.optimizer.zero_grad(set_to_none=True)
            if pending.shared is None:
                pending.outputs.backward(grad.float())
            else:
                pending.shared.backward(self, pending, grad.float())
            if not self._gradients_finite(pending):
                self.optimizer.zero_grad(set_to_none=True)
                self._pending = None
                raise ProtocolError(
                    f"the gradients of step {req.step} are not finite (grad_outputs overflow the top): the step was "
                    f"refused and the weights are unchanged; send the forward of step {req.step} again")
            self.optimizer.step()
            self.scheduler.step()
            grad_hidden = pending.hidden.grad.detach() if self.config.train_bottom else None
            self.last_backward = BackwardResult(step=req.step, grad_hidden=grad_hidden)
            self.completed_step = req.step
            self._pending = None
            return self.last_backward

    def _gradients_finite(self, pending: _Pending) -> bool:
        grads = [p.grad for p in self.tuned.parameters() if p.grad is not None]
        if self.config.train_bottom and pending.hidden.grad is not None:
            grads.append(pending.hidden.grad)
        return all(bool(torch.isfinite(g).all()) for g in grads)

    def _expire_if_old(self, now: float) -> bool:
        """Drop the pending forward (and its autograd graph) once it is older than the TTL; the caller holds the
        lock. True when one was dropped."""
        pending, ttl = self._pending, self.limits.pending_ttl
        if pending is None or ttl is None or now - pending.created <= ttl:
            return False
        self.expired = (pending.step, now - pending.created)
        self._pending = None
        return True

    def expire_pending(self, now: float | None = None) -> bool:
        """:meth:`_expire_if_old` for a reaper: skips a session that is busy (its lock is held)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            return self._expire_if_old(time.monotonic() if now is None else now)
        finally:
            self.lock.release()

    @property
    def pending_cost(self) -> int:
        """batch × T² of the pending forward (0 without one): what its graph holds, in attention units; the whole
        batch's once the other members of a multi-tenant batch have run their backward and kept the graph for it."""
        pending = self._pending
        if pending is None:
            return 0
        if pending.shared is not None and pending.shared.rounds:
            return pending.shared.cost
        return attention_units(pending.hidden.shape)

    @property
    def pending_step(self) -> int | None:
        pending = self._pending
        return pending.step if pending is not None else None

    def repeated_forward(self, step: int) -> Outputs | None:
        """The reply to a repeat of the pending forward of ``step`` (a retry: its body cannot change the answer,
        which :meth:`forward` returns from the cache too); ``None`` when that step is not pending."""
        with self.lock:
            self.check_open()
            pending = self._pending
            return pending.reply if pending is not None and pending.step == step else None

    def predict(self, req: PredictRequest) -> Outputs:
        hidden, mask = check_representations(req.hidden, req.attention_mask, self.d_model, self.max_tokens,
                                             self.limits)
        with self.lock, torch.no_grad():
            self.check_open()
            self.tuned.module.eval()
            outputs = self._run_top(hidden, mask)
        return Outputs(step=self.completed_step, outputs=outputs)

    def decode(self, req: DecodeRequest) -> Outputs:
        """One generation step of the middle: ``reset`` replaces the cache with a new sequence's (the prompt), a
        later request appends one token. One cache per session bounds the vendor's memory to one sequence each.
        Received vectors are checked against the session's width (r with a privatizer, whose up-projection the
        middle applies first). Refused (409) while a training step is in flight: generate between steps."""
        from splitpriv.parts import PartCache

        if not self.config.causal:
            raise ProtocolError(f"decode needs a causal-lm session; this one is {self.config.task!r} (use predict)")
        hidden, mask = check_representations(req.hidden, req.attention_mask, self.d_model, self.max_tokens,
                                             self.limits)
        if hidden.shape[0] != 1 or not bool(mask.all()):
            raise ProtocolError(f"decode takes one unpadded sequence [1, t, d], got {list(hidden.shape)} with padding "
                                f"{int((mask == 0).sum())}")
        with self.lock, torch.no_grad():
            self.check_open()
            self._expire_if_old(time.monotonic())  # an abandoned step blocks generation for the TTL at most
            if self._pending is not None:
                raise OutOfOrder(f"session {self.session_id} is training: the forward of step {self._pending.step} "
                                 "awaits its backward; generate once that step is complete")
            if req.reset:
                self.decode_cache = None
                self.decode_cache = PartCache()
            elif self.decode_cache is None:
                raise OutOfOrder("decode without a prompt: send the prompt first with reset=True")
            elif hidden.shape[1] != 1:
                raise ProtocolError(f"after the prompt, decode takes one token at a time, got {hidden.shape[1]}")
            cache = self.decode_cache
            if cache.length + hidden.shape[1] > self.max_tokens:
                raise ProtocolError(f"the sequence would reach {cache.length + hidden.shape[1]} tokens, above this "
                                    f"model's maximum of {self.max_tokens}")
            self.tuned.module.eval()
            outputs = self.tuned.module(hidden, None, cache)
        return Outputs(step=cache.length, outputs=outputs)

    def status(self) -> dict:
        return {
            "session_id": self.session_id,
            "completed_step": self.completed_step,
            "pending_step": self._pending.step if self._pending else None,
            "lr": self.scheduler.get_last_lr()[0],
            "trainable_parameters": self.tuned.num_trainable(),
            "checkpointed_step": self.checkpointed_step,
            "config": self.config.to_dict(),
        }

    def param_names(self) -> list[str]:
        """The trainable weights' names, in the optimizer's order."""
        ids = {id(p): n for n, p in self.tuned.module.named_parameters()}
        return [ids[id(p)] for group in self.optimizer.param_groups for p in group["params"]]


__all__ = ["DEFAULT_LIMITS", "RNG_LOCK", "ForwardExpired", "RequestLimits", "VendorSession", "check_magnitude",
           "check_next_step", "check_representations", "check_tuning_size", "token_hash"]
