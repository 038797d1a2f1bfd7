"""What one run is: :class:`RunConfig` (data, model, split, tuning, privacy, training; ``run.json`` of every run
folder) and the session it opens with the vendor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from splitpriv.batching import num_steps
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.contract import SessionConfig
from splitpriv.tasks import task_of

RUN_FILE = "run.json"
SESSION_FILE = "session.json"
METRICS_FILE = "metrics.json"
JOURNAL_DIR = "journal"


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "sst2-sample"
    eval_split: str = "dev"
    train_limit: int | None = None
    eval_limit: int | None = None
    model: str | None = None
    method: str = "lora"
    method_params: dict = field(default_factory=dict)
    bottom_layers: int = 0
    head: str = "vendor"
    denoise: str = "none"
    robust_top: dict | None = None
    # the vendor pre-trains the privatizer's halves and its blocks on public text before the session and ships the
    # projection (options of splitpriv.roles.vendor.robust_top.RobustTopConfig: steps, lr, batch_size, ...)
    vendor_pretrain: dict | None = None
    task: str = "sequence-classification"  # a splitpriv.tasks name ("causal-lm", ...)
    tail_layers: int = 0  # causal LM: blocks of the customer's tail
    eval_before: bool = False  # causal LM: also score the untuned model through the same split
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    dropout: bool = True
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    centralized: bool = False
    baseline: bool = False
    vendor_url: str | None = None

    def __post_init__(self):
        if isinstance(self.privacy, PrivacyConfig) and isinstance(self.train, TrainConfig):
            object.__setattr__(self, "privacy", self.privacy.for_training(self.train))  # records hold the mode used

    def validate(self) -> "RunConfig":
        from splitpriv.tuning import tuning_config

        tuning_config(self.method, **self.method_params)
        self.privacy.validate()
        self.train.validate(self.privacy)
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.centralized and self.vendor_url:
            raise ValueError("--centralized trains locally without a vendor; drop --vendor")
        if self.denoise == "map" and self.privacy.is_noiseless:
            raise ValueError("--denoise map projects under the customer's declared noise: it needs a --mechanism")
        if not self.centralized:
            self.session_config(num_labels=2, n_train=self.train.batch_size)  # the session's own checks
        task_of(self.task).check_config(self)
        if self.robust_top is not None:
            if self.centralized or self.vendor_url:
                raise ValueError("robust_top adapts the in-process vendor's model; for a remote vendor, serve the "
                                 "folder `splitpriv robust-top` writes (`splitpriv serve --model DIR`)")
            self.robust_top_config()
        if self.vendor_pretrain is not None:
            if self.centralized or self.vendor_url or self.robust_top is not None:
                raise ValueError("vendor_pretrain pre-trains the in-process vendor's privatizer: not with "
                                 "--centralized, --vendor or robust_top (serve the folder `splitpriv "
                                 "pretrain-privatizer` writes instead)")
            if self.privacy.privatizer is None:
                raise ValueError("vendor_pretrain pre-trains a privatizer: the run declares none (--privatizer)")
            self.vendor_pretrain_config()
        return self

    def vendor_pretrain_config(self):
        from splitpriv.roles.vendor.robust_top import RobustTopConfig

        return RobustTopConfig.for_run(self.vendor_pretrain, self.privacy, self.bottom_layers)

    def robust_top_config(self):
        from splitpriv.roles.vendor.robust_top import RobustTopConfig

        return RobustTopConfig.for_run(self.robust_top, self.privacy, self.bottom_layers, self.denoise)

    def vendor_model(self, *, progress: bool = False) -> str | None:
        """The model the vendor serves: ``model``, or its noise-adapted variant when ``robust_top`` is set
        (:mod:`splitpriv.roles.vendor.robust_top`), or the folder with the privatizer it pre-trained when
        ``vendor_pretrain`` is (:mod:`splitpriv.roles.vendor.privatizer_pretrain`); distilled on public text once,
        then cached."""
        if self.vendor_pretrain is not None:
            from splitpriv.roles.vendor.privatizer_pretrain import pretrained_model

            return str(pretrained_model(self.privacy.privatizer, self.vendor_pretrain_config(), model=self.model,
                                        task=self.task, n_tail_layers=self.tail_layers, progress=progress))
        if self.robust_top is None:
            return self.model
        from splitpriv.roles.vendor.robust_top import robust_model

        return str(robust_model(self.robust_top_config(), model=self.model, progress=progress))

    def session_config(self, num_labels: int, n_train: int) -> SessionConfig:
        return SessionConfig(
            n_bottom_layers=self.bottom_layers,
            num_labels=num_labels,
            tuning={"method": self.method, **self.method_params},
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            total_steps=num_steps(n_train, self.train.batch_size, self.train.epochs),
            seed=self.train.seed,
            head=self.head,
            denoise=self.denoise,
            declared_noise=self.privacy.build_mechanism().to_config() if self.denoise == "map" else None,
            train_bottom=self.train.bottom == "trained",
            dropout=self.dropout,
            task=self.task,
            n_tail_layers=self.tail_layers,
            privatizer=self.privacy.privatizer,
        ).validate()

    def to_dict(self) -> dict:
        return {**asdict(self), "privacy": self.privacy.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        privacy = PrivacyConfig.from_dict(data.pop("privacy", {}))
        train = TrainConfig(**data.pop("train", {}))
        return cls(privacy=privacy, train=train, **data)
