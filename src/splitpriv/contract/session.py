"""What a customer asks for when it opens a session (:class:`SessionConfig`, all public to the vendor) and what the
vendor answers (:class:`SessionInfo`); :class:`ProtocolError` for a message or config that does not fit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

HEADS = ("vendor", "customer")
DENOISERS = ("none", "nn", "map")  # vendor-side input projection, see splitpriv.roles.vendor.denoise

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
    denoise: str = "none"  # "nn"/"map": the vendor maps each received vector to a token embedding (k = 0)
    # the customer's declared mechanism (``Mechanism.to_config()``: {"name": "dchi", "eta": 10}); only denoise="map"
    # uses it (every attack assumes the vendor knows it anyway)
    declared_noise: dict | None = None
    task: str = "sequence-classification"  # or "causal-lm": a three-part split, the customer keeps the tail
    n_tail_layers: int = 0  # causal LM: blocks in the customer's tail (besides the final norm and LM head)
    # a learned privatizer (``Privatizer.to_config()``: {"name": "bottleneck", "r": 16, ...}); its output width (r)
    # is the width the vendor accepts, in every task (a causal LM's middle lifts r -> d before its first block too;
    # splitpriv.privacy.privatizer, splitpriv.parts.privatizer)
    privatizer: dict | None = None

    def validate(self) -> "SessionConfig":
        """Check every field (bounded as :mod:`splitpriv.contract.limits` documents); ``ValueError`` naming the field."""
        from splitpriv.contract import limits as L
        from splitpriv.tuning import tuning_config

        L.check_int("n_bottom_layers", self.n_bottom_layers, -(2**31), 2**31)  # the split names the model's range
        for name in ("tuning", "declared_noise", "privatizer", "model", "head", "denoise", "task"):
            L.check_config_tree(getattr(self, name), name, 2)
        self._validate_task()
        L.check_int("num_labels", self.num_labels, 2, 10**9)
        if not isinstance(self.tuning, (dict, str)):
            raise ValueError(f'tuning must be an object such as {{"method": "lora"}}, got {self.tuning!r}')
        tuning_config(self.tuning)
        L.check_number("lr", self.lr, 0, L.MAX_LR, open_low=True)
        L.check_number("weight_decay", self.weight_decay, 0, L.MAX_WEIGHT_DECAY)
        L.check_number("warmup_ratio", self.warmup_ratio, 0, 1)
        if not self.warmup_ratio < 1:
            raise ValueError(f"need warmup_ratio < 1, got warmup_ratio={self.warmup_ratio}")
        L.check_int("total_steps", self.total_steps, 1, L.MAX_TOTAL_STEPS)
        L.check_int("seed", self.seed, 0, L.MAX_SEED)
        L.check_bool("train_bottom", self.train_bottom)
        L.check_bool("dropout", self.dropout)
        for name, kind in (("model", str), ("declared_noise", dict), ("privatizer", (dict, str))):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be {'a string' if kind is str else 'an object'} or null, "
                                 f"got {type(getattr(self, name)).__name__}")
        if not isinstance(self.head, str) or self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if not isinstance(self.denoise, str) or self.denoise not in DENOISERS:
            raise ValueError(f"denoise must be one of {DENOISERS}, got {self.denoise!r}")
        if self.denoise != "none" and (self.n_bottom_layers != 0 or self.train_bottom):
            raise ValueError(f"denoise={self.denoise!r} projects embedding-layer outputs: it needs n_bottom_layers=0 "
                             "and a frozen bottom (the projection passes no gradient back)")
        if self.denoise == "map":
            from splitpriv.privacy import build_mechanism

            noise = self.declared_noise
            if not isinstance(noise, dict) or noise.get("name") in (None, "none"):
                raise ValueError("denoise='map' needs declared_noise, the customer's mechanism and its parameter "
                                 "(e.g. {'name': 'dchi', 'eta': 10})")
            build_mechanism(noise)  # names a bad mechanism or parameter
        if self.privatizer is not None:
            self._validate_privatizer()
        return self

    def _validate_privatizer(self) -> None:
        from splitpriv.privacy.privatizer import privatizer_config

        privatizer_config(self.privatizer)
        if self.denoise != "none":
            raise ValueError(f"a privatizer sends r-dimensional vectors, which the vendor cannot project to token "
                             f"embeddings: it works with no vendor denoising (got denoise={self.denoise!r})")

    def _validate_task(self) -> None:
        from splitpriv.tasks import task_of, task_values

        if not isinstance(self.task, str) or self.task not in task_values():
            raise ValueError(f"unknown task {self.task!r}: choose one of {task_values()}")
        if isinstance(self.n_tail_layers, bool) or not isinstance(self.n_tail_layers, int) or self.n_tail_layers < 0:
            raise ValueError(f"n_tail_layers must be an integer >= 0, got {self.n_tail_layers!r}")
        task_of(self.task).check_session(self)

    @property
    def model_task(self) -> str:
        """The transformers head the vendor's model carries for this session's task."""
        from splitpriv.tasks import task_of

        return task_of(self.task).model_task

    @property
    def causal(self) -> bool:
        return self.model_task == "causal-lm"

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
