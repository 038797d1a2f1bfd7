"""The customer's configuration, validated at the boundary. (What the vendor is told lives in
:class:`splitpriv.contract.SessionConfig`.)"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

NOISE_MODES = ("per-step", "once")
NOISE_CHOICES = ("auto", *NOISE_MODES)  # auto: once per sentence when training sees a sentence more than once
BOTTOM_MODES = ("frozen", "trained")
# Parameters of the mechanisms whose records predate the registry: their keys hash the flat layout (see legacy_layout).
LEGACY_PARAMETERS = ("eta", "sigma", "scale")


def _positive(name: str, value) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _mechanism_config(mechanism, params: dict) -> dict:
    """``{"name": ..., **parameters}`` from a name, a config dict or a built mechanism, plus keyword ``params``
    (``None`` values dropped). Unvalidated: :meth:`PrivacyConfig.validate` builds it."""
    from splitpriv.privacy import Mechanism

    if isinstance(mechanism, Mechanism):
        mechanism = mechanism.to_config()
    if mechanism is None:
        mechanism = "none"
    if isinstance(mechanism, str):
        mechanism = {"name": mechanism}
    if not isinstance(mechanism, dict):
        raise ValueError(f"mechanism must be a name or a config dict like {{'name': 'dchi', 'eta': 10}}, "
                         f"got {mechanism!r}")
    return {**mechanism, **{k: v for k, v in params.items() if v is not None}}


@dataclass(frozen=True, init=False)
class PrivacyConfig:
    """How the customer privatizes what it sends: the mechanism and its parameters, CTI, and when noise is drawn.

    ``mechanism`` is a registered mechanism's name and ``mechanism_params`` its parameters; the constructor also
    takes the mechanism as a config dict (``{"name": "dchi", "eta": 10}``, the shape of
    :meth:`Mechanism.to_config`, used everywhere: session, run config, grid, attacks) and the parameters as keywords
    (``PrivacyConfig(mechanism="dchi", eta=10)``). ``label_dp_epsilon`` randomizes the training labels once (RR_ε,
    :mod:`splitpriv.privacy.label_dp`) before any loss is computed. ``noise="once"`` privatizes each training sample
    a single time and re-sends the same representation every epoch (the SAP one-time upload): the vendor never gets
    two independent noisy looks at one sentence. ``grad_clip`` / ``grad_sigma`` defend the gradient the customer
    returns (:mod:`splitpriv.privacy.gradient_noise`): each example's gradient clipped to L2 norm ``grad_clip``, then
    Gaussian noise of standard deviation ``grad_sigma * grad_clip`` on every coordinate of its real tokens.
    """

    mechanism: str = "none"
    mechanism_params: dict = field(default_factory=dict)
    cti: bool = False
    cti_fraction: float = 0.005
    cti_multiplier: float = 2.0
    noise: str = "auto"
    label_dp_epsilon: float | None = None
    privatizer: dict | None = None  # a learned privatizer before the mechanism (splitpriv.privacy.privatizer)
    grad_clip: float | None = None
    grad_sigma: float = 0.0

    def __init__(self, mechanism="none", *, mechanism_params: dict | None = None, cti: bool = False,
                 cti_fraction: float = 0.005, cti_multiplier: float = 2.0, noise: str = "auto",
                 label_dp_epsilon: float | None = None, privatizer: dict | str | None = None,
                 grad_clip: float | None = None, grad_sigma: float = 0.0, **params):
        config = _mechanism_config(mechanism, {**(mechanism_params or {}), **params})
        name = config.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"mechanism config needs a 'name', got {mechanism!r}")
        for key, value in dict(name=name, params=config, cti=cti, cti_fraction=cti_fraction,
                               cti_multiplier=cti_multiplier, noise=noise, label_dp_epsilon=label_dp_epsilon,
                               privatizer=_privatizer_config(privatizer), grad_clip=grad_clip,
                               grad_sigma=grad_sigma).items():
            object.__setattr__(self, "mechanism" if key == "name" else "mechanism_params" if key == "params" else key,
                               value)

    @property
    def mechanism_config(self) -> dict:
        """The mechanism as ``{"name": ..., **parameters}``."""
        return {"name": self.mechanism, **self.mechanism_params}

    def validate(self) -> "PrivacyConfig":
        from splitpriv.privacy import MECHANISMS

        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}: choose one of {MECHANISMS.names()}")
        mech = self.build_mechanism(validate=False)
        if self.noise not in NOISE_CHOICES:
            raise ValueError(f"noise must be one of {NOISE_CHOICES}, got {self.noise!r}")
        if self.cti:
            if mech.is_noiseless:
                raise ValueError("CTI reallocates noise, so it needs a mechanism other than 'none'")
            if not 0 < self.cti_fraction < 1:
                raise ValueError(f"cti_fraction must be in (0, 1), got {self.cti_fraction!r}")
            _positive("cti_multiplier", self.cti_multiplier)
        if self.label_dp_epsilon is not None and not (
            isinstance(self.label_dp_epsilon, (int, float)) and self.label_dp_epsilon > 0
        ):
            raise ValueError(f"label_dp_epsilon must be > 0 (or inf for none), got {self.label_dp_epsilon!r}")
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if isinstance(self.grad_sigma, bool) or not isinstance(self.grad_sigma, (int, float)) or not (
                math.isfinite(self.grad_sigma) and self.grad_sigma >= 0):
            raise ValueError(f"grad_sigma must be a finite number >= 0, got {self.grad_sigma!r}")
        if self.grad_sigma and self.grad_clip is None:
            raise ValueError("grad_sigma is a multiple of grad_clip (the noise's standard deviation is "
                             "grad_sigma * grad_clip): set grad_clip too")
        return self

    def build_mechanism(self, *, validate: bool = True):
        """The :class:`~splitpriv.privacy.Mechanism`; a missing or bad parameter is one error naming it."""
        from splitpriv.privacy import build_mechanism

        if validate:
            return self.validate().build_mechanism(validate=False)
        try:
            return build_mechanism(self.mechanism_config)
        except ValueError as exc:
            if "missing option(s)" in str(exc):
                needed = ", ".join(f"--{p}" for p in _required(self.mechanism) if p not in self.mechanism_params)
                raise ValueError(f"mechanism {self.mechanism!r} needs {needed}") from None
            raise ValueError(f"mechanism {self.mechanism!r}: {exc}") from None

    def for_training(self, train: "TrainConfig") -> "PrivacyConfig":
        """This config with ``noise`` resolved for ``train``: "auto" becomes "once" when the customer sends a
        sentence more than once (epochs > 1) with a frozen bottom, else "per-step". Per-step noise over several
        epochs of a noisy mechanism is allowed but warned about: it hands the vendor independent looks to average."""
        import warnings
        from dataclasses import replace

        noise = self.noise
        if noise == "auto":
            noise = "once" if train.epochs > 1 and train.bottom == "frozen" else "per-step"
        if noise == "per-step" and train.epochs > 1 and not self.is_noiseless:
            warnings.warn(f"fresh noise at each of {train.epochs} epochs gives the vendor {train.epochs} independent "
                          "noisy looks at every sentence, which it can average (use noise 'once' with a frozen "
                          "bottom)", UserWarning, stacklevel=2)
        return self if noise == self.noise else replace(self, noise=noise)

    @property
    def is_noiseless(self) -> bool:
        return self.build_mechanism().is_noiseless

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism_config, "cti": self.cti, "cti_fraction": self.cti_fraction,
                "cti_multiplier": self.cti_multiplier, "noise": self.noise, "label_dp_epsilon": self.label_dp_epsilon,
                **({"privatizer": self.privatizer} if self.privatizer is not None else {}),
                # only when set, so that the records of runs without the gradient defence keep their keys
                **({"grad_clip": self.grad_clip, "grad_sigma": self.grad_sigma} if self.defends_gradients else {})}

    @property
    def defends_gradients(self) -> bool:
        """Whether the returned gradient is clipped (and perhaps noised) before it is sent."""
        return self.grad_clip is not None

    @classmethod
    def from_dict(cls, data: dict) -> "PrivacyConfig":
        """From :meth:`to_dict`'s shape, or the flat one of older records (``"mechanism": "dchi", "eta": 10``):
        any key that is not a field is a parameter of the mechanism."""
        if not isinstance(data, dict):
            raise ValueError(f"privacy must be a mapping, got {data!r}")
        return cls(**data)

    def legacy_layout(self) -> dict:
        """The flat dict that records written before mechanisms carried their own config were keyed by, for the
        mechanisms of that time; hashing it keeps those records (hours of compute) valid. Other mechanisms:
        :meth:`to_dict`."""
        if not set(self.mechanism_params) <= set(LEGACY_PARAMETERS):
            return self.to_dict()
        flat = {"mechanism": self.mechanism, **{p: self.mechanism_params.get(p) for p in LEGACY_PARAMETERS}}
        return {**flat, **{k: v for k, v in self.to_dict().items() if k != "mechanism"}}


def _privatizer_config(privatizer) -> dict | None:
    """A privatizer spec (``"bottleneck:r=16"``) or config dict, canonical and validated; None stays None."""
    if privatizer is None:
        return None
    from splitpriv.privacy.privatizer import privatizer_config

    return privatizer_config(privatizer)


def _required(name: str) -> list[str]:
    from dataclasses import MISSING, fields

    from splitpriv.privacy import MECHANISMS

    return [f.name for f in fields(MECHANISMS.get(name).Config) if f.default is MISSING
            and f.default_factory is MISSING]


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
    privatizer_lr: float | None = None
    privatizer_warm_start: int = 0
    warm_start_blocks: bool = False
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
        if self.privatizer_lr is not None:
            _positive("privatizer_lr", self.privatizer_lr)
        warm = self.privatizer_warm_start
        if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
            raise ValueError(f"privatizer_warm_start must be a number of epochs >= 0, got {warm!r}")
        if warm and privacy is not None and privacy.privatizer is None:
            raise ValueError("privatizer_warm_start needs a privatizer (e.g. --privatizer bottleneck:r=8)")
        if not isinstance(self.warm_start_blocks, bool):
            raise ValueError(f"warm_start_blocks must be true or false, got {self.warm_start_blocks!r}")
        if self.warm_start_blocks and not warm:
            raise ValueError("warm_start_blocks trains the bottom's blocks during the privatizer warm start: it needs "
                             "privatizer_warm_start >= 1 (--privatizer-warm-start N)")
        from splitpriv.contract import WIRE_DTYPES

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
