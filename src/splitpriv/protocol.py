"""The messages between customer and vendor, and their one encoding: a safetensors blob whose header metadata
carries the message type and its small JSON fields. The same bytes cross the in-process transport and HTTP.

What crosses, and so what a vendor can observe: privatized token representations and their attention mask (which
reveals each sequence's length), the gradient of the loss w.r.t. the vendor's outputs, and step numbers. Never
token ids, text or labels: no message type has a field for them.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

HEADS = ("vendor", "customer")
WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not fit its session; the text names the problem."""


@dataclass(frozen=True)
class SessionConfig:
    """What a customer asks the vendor for when it opens a session (all public to the vendor)."""

    n_bottom_layers: int = 0
    num_labels: int = 2
    tuning: dict = field(default_factory=lambda: {"method": "lora"})
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    total_steps: int = 1000
    seed: int = 0
    head: str = "vendor"
    train_bottom: bool = False
    dropout: bool = True
    model: str | None = None

    def validate(self) -> "SessionConfig":
        from splitpriv.tuning import tuning_config

        if isinstance(self.n_bottom_layers, bool) or not isinstance(self.n_bottom_layers, int):
            raise ValueError(f"n_bottom_layers must be an integer, got {self.n_bottom_layers!r}")
        if not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2, got {self.num_labels!r}")
        tuning_config(self.tuning)
        for name in ("lr", "weight_decay", "warmup_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0 or not self.warmup_ratio < 1:
            raise ValueError(f"need lr > 0 and warmup_ratio < 1, got lr={self.lr}, warmup_ratio={self.warmup_ratio}")
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {self.total_steps!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SessionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown session config fields {unknown}; known: {sorted(known)}")
        return cls(**data).validate()


@dataclass(frozen=True)
class SessionInfo:
    """The vendor's answer to an opened session. ``token`` is the session's bearer secret."""

    session_id: str
    token: str
    d_model: int
    n_layers: int
    disclosure: dict


class Message:
    """Base of the tensor-carrying messages: ``to_bytes`` / ``from_bytes`` via safetensors."""

    kind: ClassVar[str]
    tensor_fields: ClassVar[tuple[str, ...]]

    def to_bytes(self) -> bytes:
        tensors, meta = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.tensor_fields:
                if value is not None:
                    tensors[f.name] = value.detach().contiguous().cpu()
            else:
                meta[f.name] = value
        return st_save(tensors, metadata={"kind": self.kind, "fields": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes):
        return decode(data, expect=cls)


@dataclass(frozen=True)
class ForwardRequest(Message):
    """Privatized representations [B, T, d] and mask [B, T] for training step ``step``."""

    session_id: str
    step: int
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    kind: ClassVar[str] = "forward"
    tensor_fields: ClassVar[tuple[str, ...]] = ("hidden", "attention_mask")


@dataclass(frozen=True)
class PredictRequest(Message):
    """Privatized representations for inference: no step, no optimizer, no stored state."""

    session_id: str
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    kind: ClassVar[str] = "predict"
    tensor_fields: ClassVar[tuple[str, ...]] = ("hidden", "attention_mask")


@dataclass(frozen=True)
class Outputs(Message):
    """The top's outputs: logits [B, C] (vendor-held head) or last hidden states [B, T, d] (customer-held head)."""

    step: int
    outputs: torch.Tensor
    kind: ClassVar[str] = "outputs"
    tensor_fields: ClassVar[tuple[str, ...]] = ("outputs",)


@dataclass(frozen=True)
class BackwardRequest(Message):
    """∂L/∂outputs for step ``step``; the vendor back-propagates and steps its optimizer once."""

    session_id: str
    step: int
    grad_outputs: torch.Tensor
    kind: ClassVar[str] = "backward"
    tensor_fields: ClassVar[tuple[str, ...]] = ("grad_outputs",)


@dataclass(frozen=True)
class BackwardResult(Message):
    """∂L/∂(sent representations), for a customer that trains its bottom; None when the bottom is frozen."""

    step: int
    grad_hidden: torch.Tensor | None = None
    kind: ClassVar[str] = "backward_result"
    tensor_fields: ClassVar[tuple[str, ...]] = ("grad_hidden",)


MESSAGES: dict[str, type[Message]] = {
    m.kind: m for m in (ForwardRequest, PredictRequest, Outputs, BackwardRequest, BackwardResult)
}


def decode(data: bytes, expect: type[Message] | None = None) -> Message:
    """Parse a message, or raise :class:`ProtocolError` naming what is wrong (truncated, unknown kind, ...)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 8:
        raise ProtocolError("message is empty or truncated: not a safetensors payload")
    try:
        tensors = st_load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8 : 8 + header_len]))
        meta = header.get("__metadata__") or {}
        scalars = json.loads(meta.get("fields", "{}"))
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed or truncated safetensors payload: {exc}") from None
    if not isinstance(scalars, dict):
        raise ProtocolError("message metadata 'fields' must be a JSON object")
    kind = meta.get("kind")
    cls = MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if expect is not None and cls is not expect:
        raise ProtocolError(f"expected a {expect.kind!r} message, got {kind!r}")
    names = {f.name for f in fields(cls)}
    extra = sorted((set(scalars) | set(tensors)) - names)
    missing = sorted(n for n in names if n not in scalars and n not in tensors and not _optional(cls, n))
    if extra or missing:
        raise ProtocolError(f"{kind} message: missing fields {missing}, unexpected fields {extra}")
    return cls(**{**scalars, **tensors})


def _optional(cls, name: str) -> bool:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default is None


def pack_files(files: dict[str, bytes]) -> bytes:
    """Several files (the bottom's weights, its config, the tokenizer) as one zip archive, stored uncompressed
    (float weights compress by ~10% at seconds of CPU per download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, content in sorted(files.items()):
            zf.writestr(name, content)
    return buf.getvalue()


def unpack_files(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            out = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if name.startswith("/") or ".." in name.split("/"):
                    raise ProtocolError(f"unsafe file name in bottom package: {name!r}")
                out[name] = zf.read(info)
            return out
    except zipfile.BadZipFile as exc:
        raise ProtocolError(f"bottom package is not a valid archive: {exc}") from None


def message_summary(msg: Message) -> dict:
    """Field names, shapes and dtypes of a message: what an observer of the wire learns besides the values."""
    out = {"kind": msg.kind}
    for f in fields(msg):
        value = getattr(msg, f.name)
        out[f.name] = (tuple(value.shape), str(value.dtype)) if isinstance(value, torch.Tensor) else value
    return out


__all__ = [
    "BackwardRequest", "BackwardResult", "ForwardRequest", "HEADS", "MESSAGES", "Message", "Outputs",
    "PredictRequest", "ProtocolError", "SessionConfig", "SessionInfo", "WIRE_DTYPES", "asdict", "decode",
    "message_summary", "pack_files", "unpack_files",
]
