"""The packed wire encoding of representations (real tokens only) and the wire dtype (float32/float16/bfloat16)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import (
    MAX_UNPACKED_ELEMENTS,
    WIRE_DTYPES,
    BackwardRequest,
    ForwardRequest,
    PredictRequest,
    ProtocolError,
    SessionConfig,
    decode,
)

D = 16


def _batch(lengths, T=None, d=D, left=False, seed=0):
    """Representations [B, T, d] zeroed at padding and their mask, for sequences of ``lengths``."""
    T = T or max(lengths)
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, T - n:] = 1
        else:
            mask[i, :n] = 1
    hidden = torch.randn(len(lengths), T, d, generator=g) * mask.unsqueeze(-1)
    return hidden, mask


def _raw(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


@pytest.mark.parametrize("dtype", list(WIRE_DTYPES))
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_packed_encoding_round_trips_exactly(dtype, left):
    hidden, mask = _batch([7, 1, 4, 7, 2], left=left)
    hidden = hidden.to(WIRE_DTYPES[dtype])
    for msg in (ForwardRequest("abc", 3, hidden, mask), PredictRequest("abc", hidden, mask)):
        data = msg.to_bytes()
        raw = _raw(data)
        assert set(raw) == {"hidden", "attention_mask"}
        assert list(raw["hidden"].shape) == [int(mask.sum()), D]  # real tokens only
        assert raw["hidden"].dtype == WIRE_DTYPES[dtype] and raw["attention_mask"].dtype == torch.uint8
        back = decode(data, expect=type(msg))
        assert back.hidden.dtype == hidden.dtype and back.attention_mask.dtype == torch.long
        assert torch.equal(back.hidden, hidden) and torch.equal(back.attention_mask, mask)
        assert back.session_id == "abc" and getattr(back, "step", 3) == 3


def test_a_batch_without_padding_and_a_bool_mask_round_trip():
    hidden, mask = _batch([5, 5, 5])
    back = decode(ForwardRequest("s", 1, hidden, mask.bool()).to_bytes())
    assert torch.equal(back.hidden, hidden) and torch.equal(back.attention_mask, mask)


def test_packed_bytes_are_the_real_tokens_plus_the_mask_and_a_small_header():
    hidden, mask = _batch([30, 3, 12, 64, 9, 1], T=64, d=384)
    for dtype, size in (("float32", 4), ("float16", 2), ("bfloat16", 2)):
        data = ForwardRequest("0123456789abcdef", 12, hidden.to(WIRE_DTYPES[dtype]), mask).to_bytes()
        floor = int(mask.sum()) * 384 * size
        assert floor + mask.numel() <= len(data) <= floor + mask.numel() + 400, (dtype, len(data), floor)
    padded = hidden.numel() * 4
    assert len(ForwardRequest("s", 1, hidden, mask).to_bytes()) < 0.4 * padded


def test_non_zero_padding_is_refused_not_dropped():
    hidden, mask = _batch([4, 2, 3])
    dirty = hidden.clone()
    dirty[1, 3, 5] = 0.25
    with pytest.raises(ValueError, match=r"non-zero at padding positions \(sequences \[1\]\).*customer always"):
        ForwardRequest("s", 1, dirty, mask).to_bytes()
    nan = hidden.clone()
    nan[2, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-zero at padding"):
        PredictRequest("s", nan, mask).to_bytes()


def test_a_customer_message_always_has_zero_padding():
    """privatize() zeroes padding, so the customer's messages always pack (no ValueError), noise or not."""
    from splitpriv.privacy import build_mechanism, privatize

    hidden, mask = _batch([6, 2, 4])
    hidden = hidden + 1.0  # the bottom's padding positions are not zero
    z = privatize(build_mechanism("dchi", eta=5.0), hidden, mask, generator=torch.Generator().manual_seed(0))
    back = decode(ForwardRequest("s", 1, z, mask).to_bytes())
    assert torch.equal(back.hidden, z)


@pytest.mark.parametrize("case, words", [
    ("mask shape", ["attention_mask shape [3, 3]"]),
    ("float mask", ["attention_mask", "float"]),
    ("mask not 0/1", ["only 0 and 1"]),
    ("empty sequence", ["all zeros"]),
    ("float64 hidden", ["hidden must be a float tensor", "float64"]),
])
def test_malformed_messages_travel_padded_for_the_vendor_to_name(case, words):
    """A message that is malformed anyway is not packed (and not refused by the encoder): the receiver's checks
    name the problem, exactly as before packing existed."""
    from splitpriv.roles.vendor import check_representations

    hidden, mask = _batch([4, 2, 3])
    if case == "mask shape":
        mask = mask[:, :3]
    elif case == "float mask":
        mask = mask.float()
    elif case == "mask not 0/1":
        mask = mask * 2
    elif case == "empty sequence":
        mask[1] = 0
        hidden[1] = 1.0
    elif case == "float64 hidden":
        hidden = hidden.double()
    data = ForwardRequest("s", 1, hidden, mask).to_bytes()
    assert _raw(data)["hidden"].dim() == 3
    msg = decode(data)
    with pytest.raises(ProtocolError) as info:
        check_representations(msg.hidden, msg.attention_mask, D, 512)
    for word in words:
        assert word.lower() in str(info.value).lower()


def _packed(hidden, mask, kind="forward", fields=None):
    fields = fields if fields is not None else ({"session_id": "s", "step": 1} if kind == "forward" else {"session_id": "s"})
    tensors = {"hidden": hidden, "attention_mask": mask}
    return st_save({k: v for k, v in tensors.items() if v is not None},
                   metadata={"kind": kind, "fields": json.dumps(fields)})


_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.uint8)

MALFORMED = {
    "too few rows": (lambda: _packed(torch.randn(4, D), _MASK), ["4 rows", "5 real tokens", "shape"]),
    "too many rows": (lambda: _packed(torch.randn(6, D), _MASK), ["6 rows", "5 real tokens"]),
    "rows for an all-padding mask": (lambda: _packed(torch.randn(2, D), torch.zeros(2, 4, dtype=torch.uint8)),
                                     ["2 rows", "0 real tokens"]),
    "int hidden": (lambda: _packed(torch.ones(5, D, dtype=torch.int32), _MASK), ["hidden must be a float tensor", "int32"]),
    "float64 hidden": (lambda: _packed(torch.randn(5, D, dtype=torch.float64), _MASK), ["float tensor", "float64"]),
    "float mask": (lambda: _packed(torch.randn(5, D), _MASK.float()), ["attention_mask", "integers 0/1", "float32"]),
    "mask not 0/1": (lambda: _packed(torch.randn(5, D), _MASK * 2), ["only 0 and 1"]),
    "1-d mask": (lambda: _packed(torch.randn(5, D), torch.ones(5, dtype=torch.uint8)), ["attention_mask", "[batch, tokens]", "[5]"]),
    "3-d mask": (lambda: _packed(torch.randn(5, D), _MASK.unsqueeze(0)), ["attention_mask", "[1, 2, 4]"]),
    "width 0": (lambda: _packed(torch.zeros(5, 0), _MASK), ["width d = 0"]),
    "mask missing": (lambda: _packed(torch.randn(5, D), None), ["missing fields", "attention_mask"]),
    "unpacks too large": (lambda: _packed(torch.randn(1, D), torch.cat([torch.ones(1, 1, dtype=torch.uint8),
                                                                       torch.zeros(1, MAX_UNPACKED_ELEMENTS // D, dtype=torch.uint8)], 1)),
                          ["above the limit", "smaller batches"]),
    "predict too few rows": (lambda: _packed(torch.randn(3, D), _MASK, kind="predict"), ["3 rows", "5 real tokens"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_packed_payload_is_a_protocol_error_naming_the_problem(case):
    build, words = MALFORMED[case]
    with pytest.raises(ProtocolError) as info:
        decode(build())
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message


def test_truncated_packed_payload_is_a_protocol_error():
    hidden, mask = _batch([5, 3, 1])
    data = ForwardRequest("s", 1, hidden.half(), mask).to_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20):
        with pytest.raises(ProtocolError, match="truncated"):
            decode(data[:cut])


def test_other_messages_are_unchanged():
    grad = torch.randn(3, 2)
    back = decode(BackwardRequest("s", 2, grad).to_bytes())
    assert torch.equal(back.grad_outputs, grad)


def test_wire_dtype_is_validated():
    assert TrainConfig(wire_dtype="bfloat16").validate().wire_dtype == "bfloat16"
    with pytest.raises(ValueError, match="wire_dtype must be one of"):
        TrainConfig(wire_dtype="int8").validate()


def test_cli_train_has_a_wire_dtype_option():
    from typer.testing import CliRunner

    from splitpriv.cli import app

    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--wire-dtype" in result.output
    bad = CliRunner().invoke(app, ["train", "--wire-dtype", "int8"])
    assert bad.exit_code == 2


@pytest.fixture(scope="module")
def vendor():
    from splitpriv.roles.vendor import Vendor

    return Vendor()


def test_float16_wire_trains_in_process_and_sends_half_the_bytes(vendor):
    """Two training steps each in float32 and float16: the vendor receives float16 (and computes in float32), the
    losses agree to float16 precision, and the customer sends half the bytes."""
    from splitpriv.data import load_dataset
    from splitpriv.roles.customer import Customer
    from splitpriv.transport import InProcessTransport

    ds = load_dataset("sst2-sample", "train")
    texts, labels = list(ds.texts[:32]), list(ds.labels[:32])
    sent, losses, seen = {}, {}, {}
    for dtype in ("float32", "float16"):
        observed = []
        transport = InProcessTransport(vendor, tap=lambda d, m, o=observed: o.append(m) if d == "to_vendor" else None)
        session = SessionConfig(n_bottom_layers=1, total_steps=2, seed=0)
        train = TrainConfig(batch_size=16, seed=0, noise_seed=0, wire_dtype=dtype)
        customer = Customer.open(transport, session, PrivacyConfig(mechanism="dchi", eta=50.0), train)
        sent0 = transport.bytes_sent
        losses[dtype] = customer.fit(texts, labels, progress=False)["losses"]
        sent[dtype] = transport.bytes_sent - sent0
        assert transport.status()["completed_step"] == 2
        seen[dtype] = {m.hidden.dtype for m in observed if isinstance(m, ForwardRequest)}
        transport.close()
    assert seen == {"float32": {torch.float32}, "float16": {torch.float16}}
    assert len(losses["float16"]) == 2
    torch.testing.assert_close(torch.tensor(losses["float16"]), torch.tensor(losses["float32"]), atol=5e-3, rtol=0)
    ratio = sent["float16"] / sent["float32"]
    assert 0.49 < ratio < 0.52, (ratio, sent)


def test_float16_overflow_is_refused_at_the_customer(vendor):
    """Noise so large that float16 cannot carry it (η tiny) is a clear error before anything is sent."""
    from splitpriv.roles.customer import Customer
    from splitpriv.transport import InProcessTransport

    transport = InProcessTransport(vendor)
    customer = Customer.open(transport, SessionConfig(n_bottom_layers=0, total_steps=2),
                             PrivacyConfig(mechanism="dchi", eta=1e-4), TrainConfig(noise_seed=0, wire_dtype="float16"))
    sent = transport.bytes_sent
    with pytest.raises(ValueError, match="overflow float16.*bfloat16"):
        customer.predict(["a fine film"])
    assert transport.bytes_sent == sent
    transport.close()
