"""The documented limits on what a customer may send a vendor, in one place (pure checks, no I/O, no parties).

A vendor serves strangers, so every value that reaches it is bounded, and each check names the field it refuses:

* **Session configs** (:func:`check_config_tree`): JSON objects nested at most :data:`MAX_CONFIG_DEPTH` deep, at most
  :data:`MAX_CONFIG_ITEMS` entries per object or list, strings of at most :data:`MAX_CONFIG_STRING` characters that
  are valid Unicode (no lone surrogates), finite numbers only; integers such as ``total_steps`` and ``seed`` within
  the ranges below. The service also caps a config body at :data:`MAX_CONFIG_BYTES`.
* **Magnitude** (:data:`MAX_ABS_VALUE`): every received representation and gradient coordinate satisfies
  ``|x| <= 1e4``. Finite but huge values (3e38) would pass a finiteness check and overflow inside the top;
  legitimate ones are far below (a LayerNorm'ed embedding plus d_chi noise at η = 0.1 stays under 2,000).
* **Cost per request** (:func:`request_cost`): a forward keeps its autograd graph until its backward, and
  attention costs batch × T² per layer, so a request is refused when batch × T² exceeds
  :data:`MAX_ATTENTION_COST` = 2²³ (batch 32 at 512 tokens, 128 at 256) or batch × T exceeds
  :data:`MAX_TOKENS_PER_REQUEST`, as well as when batch × T × d exceeds the protocol's element cap; and a forward
  waits (503, retried by the client) while the vendor's pending forwards together hold :data:`MAX_PENDING_COST`.
"""

from __future__ import annotations

import math

MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 4  # the session config itself is depth 1; {"tuning": {"target_modules": [...]}} is depth 3
MAX_CONFIG_ITEMS = 64
MAX_CONFIG_STRING = 256
MAX_TOTAL_STEPS = 10**8
MAX_SEED = 2**63 - 1
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_ABS_VALUE = 1e4
MAX_ATTENTION_COST = 2**23
MAX_TOKENS_PER_REQUEST = 2**16
MAX_PENDING_COST = 2**25  # all pending forwards together: 256 training steps of batch 32 x 64 tokens, 4 at the cap


def check_config_tree(value, path: str = "config", depth: int = 1) -> None:
    """Refuse (``ValueError`` naming the field) a JSON value that is too deep, too long, not finite, or holds a
    string that is not valid Unicode."""
    if depth > MAX_CONFIG_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_CONFIG_ITEMS:
            raise ValueError(f"{path}: {len(value)} entries, at most {MAX_CONFIG_ITEMS} allowed")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings, got {type(key).__name__}")
            check_string(key, f"{path} key")
            check_config_tree(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_CONFIG_ITEMS:
            raise ValueError(f"{path}: {len(value)} items, at most {MAX_CONFIG_ITEMS} allowed")
        for i, item in enumerate(value):
            check_config_tree(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        check_string(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, got {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**63:
            raise ValueError(f"{path}: the integer is out of range (|value| <= 2**63)")
    elif value is not None and not isinstance(value, bool):
        raise ValueError(f"{path}: a JSON value was expected, got {type(value).__name__}")


def check_string(value: str, path: str) -> None:
    if len(value) > MAX_CONFIG_STRING:
        raise ValueError(f"{path}: a string of {len(value)} characters, at most {MAX_CONFIG_STRING} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: the string is not valid Unicode (a lone surrogate)") from None


def check_int(name: str, value, low: int, high: int) -> int:
    """``value`` as an integer in ``[low, high]`` (a bool or a float is refused), else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {_short(value)}")
    if not low <= value <= high:
        top = str(high) if high < 10**6 else f"{high:.3g}"
        raise ValueError(f"{name} must be an integer in [{low}, {top}], got {_short(value)}")
    return value


def check_number(name: str, value, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a finite number in ``[low, high]`` (``(low, high]`` with ``open_low``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got an integer of {len(str(value))} digits") from None
    bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        raise ValueError(f"{name} must be a finite number in {bounds}, got {_short(value)}")
    return number


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {type(value).__name__} {_short(value)}")
    return value


def request_cost(batch: int, tokens: int, width: int, *, max_attention_cost: int = MAX_ATTENTION_COST,
                 max_tokens: int = MAX_TOKENS_PER_REQUEST) -> str | None:
    """Why a ``[batch, tokens, width]`` request costs too much, or None when it is within the caps."""
    if batch * tokens > max_tokens:
        return (f"{batch} x {tokens} = {batch * tokens} token positions is above this vendor's limit of {max_tokens} "
                "per request: send smaller batches")
    if batch * tokens * tokens > max_attention_cost:
        return (f"batch x tokens^2 = {batch} x {tokens}^2 = {batch * tokens * tokens} is above this vendor's "
                f"attention-cost limit of {max_attention_cost} per request: send smaller batches or shorter sequences")
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


__all__ = [
    "MAX_ABS_VALUE", "MAX_ATTENTION_COST", "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_ITEMS",
    "MAX_CONFIG_STRING", "MAX_LR", "MAX_PENDING_COST", "MAX_SEED", "MAX_TOKENS_PER_REQUEST", "MAX_TOTAL_STEPS", "MAX_WEIGHT_DECAY",
    "check_bool", "check_config_tree", "check_int", "check_number", "check_string", "request_cost",
]
