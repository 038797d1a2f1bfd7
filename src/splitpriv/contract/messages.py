"""The messages between customer and vendor, and their one encoding: a safetensors blob whose header metadata
carries the message type and its small JSON fields. The same bytes cross the in-process transport and HTTP.

What crosses, and so what a vendor can observe: privatized token representations and their attention mask (which
reveals each sequence's length), the gradient of the loss w.r.t. the vendor's outputs, and step numbers. Never
token ids, text or labels: no message type has a field for them.

Representations travel packed (``ForwardRequest`` and ``PredictRequest``): the customer zeroes every padding
position, so only the real tokens' rows are sent, ``hidden`` as ``[N_real, d]`` (the rows where the mask is 1, in
row-major order: any padding side works) beside the mask as ``uint8`` ``[B, T]``; :func:`decode` rebuilds the
``[B, T, d]`` tensor with zeros at padding, so both roles see exactly the message that was sent (the mask comes
back as int64). The bytes are then about ``N_real × d × itemsize``: nothing is paid for padding. The wire dtype
is the sender's choice among :data:`WIRE_DTYPES` (``TrainConfig.wire_dtype``; the vendor computes in float32).

The encoder never drops data: packing a well-formed message whose ``hidden`` is non-zero at a padding position
raises ``ValueError`` (the customer always zeroes padding). A message that is malformed anyway (shapes that do not
match, a float or non-0/1 mask, a sequence with no real token, a dtype outside :data:`WIRE_DTYPES`) is sent as it
is, padded, so that the receiver names what is wrong. :func:`decode` accepts that padded layout too (a 3-d
``hidden``) and passes it on unchanged; a 2-d ``hidden`` is the packed layout, checked before it is rebuilt.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from splitpriv.contract.session import ProtocolError

WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The most elements a packed message may rebuild to (a float16 hidden filling the default 64 MiB body cap): else a
# small body could claim a huge mask of padding and make the receiver allocate B·T·d zeros (1 mask byte → d floats).
MAX_UNPACKED_ELEMENTS = 2**25
STEP_HEADER = "X-Splitpriv-Step"  # a forward's step over HTTP: refused (or a retry answered) before its body is read
SESSION_HEADER = "x-session-id"  # every session call's session, for a router that keeps a session on one replica


class Message:
    """Base of the tensor-carrying messages: ``to_bytes`` / ``from_bytes`` via safetensors."""

    kind: ClassVar[str]
    tensor_fields: ClassVar[tuple[str, ...]]
    packed: ClassVar[bool] = False  # hidden + attention_mask travel as real tokens only (see the module docstring)

    def to_bytes(self) -> bytes:
        tensors, meta = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.tensor_fields:
                if value is not None:
                    tensors[f.name] = value.detach().cpu()
            else:
                meta[f.name] = value
        if self.packed:
            packed = pack_hidden(tensors.get("hidden"), tensors.get("attention_mask"))
            if packed is not None:
                tensors["hidden"], tensors["attention_mask"] = packed
        tensors = {name: t.contiguous() for name, t in tensors.items()}
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
    packed: ClassVar[bool] = True


@dataclass(frozen=True)
class PredictRequest(Message):
    """Privatized representations for inference: no step, no optimizer, no stored state."""

    session_id: str
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    kind: ClassVar[str] = "predict"
    tensor_fields: ClassVar[tuple[str, ...]] = ("hidden", "attention_mask")
    packed: ClassVar[bool] = True


@dataclass(frozen=True)
class DecodeRequest(Message):
    """Privatized representations [1, t, d] of the next tokens of one sequence being generated (causal LM); the
    vendor runs its middle on them with the session's key/value cache. ``reset`` starts a new sequence (the prompt),
    discarding the previous cache; a later request brings one token."""

    session_id: str
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    reset: bool = False
    kind: ClassVar[str] = "decode"
    tensor_fields: ClassVar[tuple[str, ...]] = ("hidden", "attention_mask")
    packed: ClassVar[bool] = True


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
    m.kind: m for m in (ForwardRequest, PredictRequest, DecodeRequest, Outputs, BackwardRequest, BackwardResult)
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
        raise ProtocolError("malformed message: metadata 'fields' must be a JSON object")
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
    if cls.packed and tensors["hidden"].dim() == 2:
        tensors["hidden"], tensors["attention_mask"] = unpack_hidden(tensors["hidden"], tensors["attention_mask"])
    return cls(**{**scalars, **tensors})


def pack_hidden(hidden, mask) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(hidden[mask == 1] as [N_real, d], mask as uint8)`` for a well-formed ``hidden [B, T, d]`` (a dtype of
    :data:`WIRE_DTYPES`) and ``mask [B, T]`` (integers 0/1, at least one real token per sequence), or None when the
    pair is malformed (it is then sent padded, for the receiver to reject by name).

    Raises ``ValueError`` when ``hidden`` is non-zero (or NaN) at a padding position: packing would drop it. The
    customer zeroes padding before sending (:func:`splitpriv.privacy.privatize`), so only a hand-made message can.
    """
    if not (isinstance(hidden, torch.Tensor) and isinstance(mask, torch.Tensor)):
        return None
    if hidden.dim() != 3 or hidden.dtype not in WIRE_DTYPES.values() or 0 in hidden.shape:
        return None
    if mask.dim() != 2 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        return None
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        return None
    if not bool(((mask == 0) | (mask == 1)).all()) or not bool((mask != 0).any(dim=1).all()):
        return None
    real = mask.bool()
    if not bool(real.all()):
        padding = hidden[~real]
        if bool((padding != 0).any()):
            rows = sorted({int(b) for b in (~real).nonzero()[:, 0][(padding != 0).any(dim=1)].tolist()})
            raise ValueError(
                f"hidden is non-zero at padding positions (sequences {rows[:10]}): the packed wire encoding sends "
                "real tokens only and would drop them; zero the padding first (the customer always does)"
            )
        packed = hidden[real]
    else:
        packed = hidden.reshape(-1, hidden.shape[-1])
    return packed, real.to(torch.uint8)


def unpack_hidden(packed: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, d]`` with the packed rows at the mask's 1 positions and zeros elsewhere, and the mask as int64;
    :class:`ProtocolError` naming the problem for a malformed pair."""
    if packed.dtype not in WIRE_DTYPES.values():
        raise ProtocolError(f"hidden must be a float tensor ({', '.join(WIRE_DTYPES)}), got {packed.dtype}")
    if mask.dim() != 2:
        raise ProtocolError(
            f"packed hidden [real tokens, d] needs an attention_mask of shape [batch, tokens], got shape {list(mask.shape)}"
        )
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ProtocolError(f"attention_mask must hold integers 0/1, got dtype {mask.dtype}")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ProtocolError("attention_mask must hold only 0 and 1")
    real = mask.bool()
    n_real = int(real.sum())
    if packed.shape[0] != n_real:
        raise ProtocolError(
            f"packed hidden shape {list(packed.shape)} has {packed.shape[0]} rows but the attention_mask of shape "
            f"{list(mask.shape)} marks {n_real} real tokens: they must be equal"
        )
    if packed.shape[1] < 1:
        raise ProtocolError(f"packed hidden has width d = 0: shape {list(packed.shape)}")
    batch, tokens = mask.shape
    if batch * tokens * packed.shape[1] > MAX_UNPACKED_ELEMENTS:
        raise ProtocolError(
            f"packed hidden would unpack to [{batch}, {tokens}, {packed.shape[1]}], above the limit of "
            f"{MAX_UNPACKED_ELEMENTS} elements per message: send smaller batches"
        )
    if n_real == batch * tokens:
        hidden = packed.reshape(batch, tokens, packed.shape[1])
    else:
        hidden = packed.new_zeros(batch, tokens, packed.shape[1])
        hidden[real] = packed
    return hidden, mask.long()


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
    "BackwardRequest", "BackwardResult", "DecodeRequest", "ForwardRequest", "MESSAGES", "Message", "Outputs",
    "MAX_UNPACKED_ELEMENTS", "PredictRequest", "SESSION_HEADER", "STEP_HEADER", "WIRE_DTYPES", "decode",
    "message_summary", "pack_files", "pack_hidden", "unpack_files", "unpack_hidden",
]
