"""The customer's configuration, validated at the boundary. (What the vendor is told lives in
:class:`splitpriv.protocol.SessionConfig`.)"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MECHANISMS = ("none", "dchi", "gaussian", "laplace")
NOISE_MODES = ("per-step", "once")
BOTTOM_MODES = ("frozen", "trained")


def _positive(name: str, value) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class PrivacyConfig:
    """How the customer privatizes what it sends: the mechanism and its parameter, CTI, and when noise is drawn.

    ``label_dp_epsilon`` randomizes the training labels once (RR_ε, :mod:`splitpriv.privacy.label_dp`) before
    any loss is computed. ``noise="once"`` privatizes each training sample a single time and re-sends the same representation every
    epoch (the SAP one-time upload): the vendor never gets two independent noisy looks at one sentence.
    """

    mechanism: str = "none"
    eta: float | None = None
    sigma: float | None = None
    scale: float | None = None
    cti: bool = False
    cti_fraction: float = 0.005
    cti_multiplier: float = 2.0
    noise: str = "per-step"
    label_dp_epsilon: float | None = None

    def validate(self) -> "PrivacyConfig":
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}: choose one of {MECHANISMS}")
        param = {"dchi": "eta", "gaussian": "sigma", "laplace": "scale"}.get(self.mechanism)
        if param:
            if getattr(self, param) is None:
                raise ValueError(f"mechanism {self.mechanism!r} needs --{param}")
            _positive(param, getattr(self, param))
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.cti:
            if self.mechanism == "none":
                raise ValueError("CTI reallocates noise, so it needs a mechanism other than 'none'")
            if not 0 < self.cti_fraction < 1:
                raise ValueError(f"cti_fraction must be in (0, 1), got {self.cti_fraction!r}")
            _positive("cti_multiplier", self.cti_multiplier)
        if self.label_dp_epsilon is not None and not (
            isinstance(self.label_dp_epsilon, (int, float)) and self.label_dp_epsilon > 0
        ):
            raise ValueError(f"label_dp_epsilon must be > 0 (or inf for none), got {self.label_dp_epsilon!r}")
        return self

    def build_mechanism(self):
        from splitpriv.privacy import build_mechanism

        self.validate()
        params = {"dchi": {"eta": self.eta}, "gaussian": {"sigma": self.sigma}, "laplace": {"scale": self.scale}}
        return build_mechanism(self.mechanism, **params.get(self.mechanism, {}))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """The customer's training loop. ``seed`` fixes data order and dropout; ``noise_seed`` fixes the noise and
    must stay secret in real use (a vendor that knows it can subtract the noise): None draws it from the OS.
    ``wire_dtype`` is the dtype the privatized representations are sent in (one of ``protocol.WIRE_DTYPES``):
    float16 or bfloat16 halve the bytes on the wire; the vendor computes in float32 whatever arrives."""

    epochs: int = 1
    batch_size: int = 32
    max_length: int = 64
    bottom: str = "frozen"
    bottom_lr: float = 5e-5
    seed: int = 0
    noise_seed: int | None = None
    eval_batch_size: int = 128
    wire_dtype: str = "float32"

    def validate(self, privacy: PrivacyConfig | None = None) -> "TrainConfig":
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.bottom not in BOTTOM_MODES:
            raise ValueError(f"bottom must be one of {BOTTOM_MODES}, got {self.bottom!r}")
        _positive("bottom_lr", self.bottom_lr)
        from splitpriv.protocol import WIRE_DTYPES

        if self.wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {tuple(WIRE_DTYPES)}, got {self.wire_dtype!r}")
        if privacy is not None and privacy.noise == "once" and self.bottom == "trained":
            raise ValueError(
                "noise 'once' needs a frozen bottom: a trained bottom changes every representation at every step, "
                "so representations privatized once would be stale"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)
