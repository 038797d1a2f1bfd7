"""One training run end to end: data → (split, privatized) fine-tuning → private evaluation → metrics.json.

Used by ``splitpriv train`` and by the experiment grid; the roles and transports underneath are the same ones a
real deployment uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from splitpriv.batching import num_steps
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.protocol import SessionConfig
from splitpriv.provenance import run_record

RUN_FILE = "run.json"
SESSION_FILE = "session.json"
LABELS_FILE = "labels.json"
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
    task: str = "sequence-classification"  # "causal-lm": splitpriv.causal_run
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
        if self.robust_top is not None:
            if self.centralized or self.vendor_url:
                raise ValueError("robust_top adapts the in-process vendor's model; for a remote vendor, serve the "
                                 "folder `splitpriv robust-top` writes (`splitpriv serve --model DIR`)")
            self.robust_top_config()
        return self

    def robust_top_config(self):
        from splitpriv.roles.robust_top import RobustTopConfig

        return RobustTopConfig.for_run(self.robust_top, self.privacy, self.bottom_layers, self.denoise)

    def vendor_model(self, *, progress: bool = False) -> str | None:
        """The model the vendor serves: ``model``, or its noise-adapted variant when ``robust_top`` is set
        (:mod:`splitpriv.roles.robust_top`; distilled on public text once, then cached)."""
        if self.robust_top is None:
            return self.model
        from splitpriv.roles.robust_top import robust_model

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


def load_data(config: RunConfig):
    from splitpriv.data import load_dataset

    train = load_dataset(config.dataset, "train", limit=config.train_limit, seed=config.train.seed)
    evaluation = load_dataset(config.dataset, config.eval_split, limit=config.eval_limit, seed=config.train.seed)
    if train.labels is None:
        raise ValueError(f"dataset {config.dataset!r} has no task label to fine-tune on")
    return train, evaluation


VENDOR_STATE = "vendor-state"


def make_transport(config: RunConfig, *, out_dir=None, tap=None, progress: bool = False, **options):
    """The registered transport to ``vendor_url`` (``options`` such as ``api_key``, ``ca_file`` go to it), or to a
    vendor in this process (persisting its sessions under the run folder)."""
    from splitpriv.transport import make_transport as transport_for

    if config.vendor_url:
        return transport_for(config.vendor_url, tap=tap, **options)
    from splitpriv.roles.vendor import Vendor

    state_dir = Path(out_dir) / VENDOR_STATE if out_dir is not None else None
    vendor = Vendor(config.vendor_model(progress=progress), state_dir=state_dir, checkpoint_every=None)
    return transport_for(vendor, tap=tap)


def save_run(customer, transport, config: RunConfig, out_dir: str | Path) -> dict:
    """The customer's state, the vendor's checkpoint (and, in process, its exported adapter) and the session under
    ``out_dir``; returns where the vendor put them."""
    customer.save(Path(out_dir) / "customer")
    saved = {"vendor_checkpoint": transport.export(None)}
    if not config.vendor_url:
        saved["vendor_export"] = transport.export(str(Path(out_dir) / "vendor"))
    # the session's bearer token is the customer's secret: the run folder is the customer's
    write_secret(Path(out_dir) / SESSION_FILE, json.dumps(asdict(transport.session), indent=2))
    return saved


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), atomically."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def train_split(config: RunConfig, train, evaluation, *, progress: bool = True, transport=None, out_dir=None,
                resume: bool = False) -> dict:
    """Split, privatized fine-tuning through ``transport`` (in process by default), then private evaluation.
    ``resume``: ``transport`` is attached to the run's session, whose journal (:mod:`splitpriv.roles.journal`)
    restores the customer after the vendor's completed step."""
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.journal import Journal

    session = config.session_config(train.num_labels, len(train))
    transport = transport or make_transport(config, out_dir=out_dir, progress=progress)
    if resume:
        customer = Customer(transport, session, config.privacy, config.train)
    else:
        customer = Customer.open(transport, session, config.privacy, config.train)
    completed, done = 0, []
    if out_dir is not None:  # as soon as the session is open: a crashed run can still close or resume it
        (Path(out_dir) / "customer").mkdir(parents=True, exist_ok=True)
        write_secret(Path(out_dir) / "customer" / SESSION_FILE, json.dumps(asdict(transport.session), indent=2))
        if config.vendor_url and config.train.bottom == "frozen" and config.head == "vendor":
            customer.journal = Journal(Path(out_dir) / "customer" / JOURNAL_DIR)
    if resume:
        if customer.journal is None:
            raise ValueError("only a --vendor run with a frozen bottom and the vendor-held head can be resumed")
        completed = int(transport.status()["completed_step"])
        customer.journal.restore(customer, completed)
        kept = customer.journal.losses()
        done = [kept[str(s)] for s in range(1, completed + 1) if str(s) in kept]
    history = customer.fit(train.texts, train.labels, progress=progress, start_step=completed)
    history["losses"] = done + history["losses"]
    # training traffic only: read before private evaluation adds its predict requests
    bytes_per_step = transport.bytes_sent / max(len(history["losses"]), 1)
    result = {**history, **customer.evaluate(evaluation.texts, evaluation.labels, progress=progress)}
    result["bytes_sent_per_step"] = bytes_per_step
    result["disclosure"] = transport.session.disclosure
    if config.privacy.cti and customer.cti is not None:
        result["cti_tokens"] = customer.tokenizer.convert_ids_to_tokens(customer.cti.token_ids[:20].tolist())
    if out_dir is not None:
        result.update(save_run(customer, transport, config, out_dir))
    result["_customer"] = customer
    return result


def train_centralized(config: RunConfig, train, evaluation, *, progress: bool = True) -> dict:
    from splitpriv.centralized import CentralizedTrainer

    trainer = CentralizedTrainer(config.session_config(train.num_labels, len(train)), config.train, config.model)
    history = trainer.fit(train.texts, train.labels, progress=progress)
    return {**history, **trainer.evaluate(evaluation.texts, evaluation.labels)}


def reference_config(config: RunConfig, *, equal_passes: bool = False) -> RunConfig:
    """The centralized non-private LoRA a split run is compared with: the vendor's own model (not a noise-adapted
    one), the same data, seed and budget, no privacy, denoiser or privatizer training. When the customer trains its
    bottom's blocks at home (``warm_start_blocks``) the reference tunes every block (k = 0): a reference whose
    bottom stays frozen would be handicapped by what the private run was allowed. ``equal_passes``: the stricter
    reference that also gets the warm start's passes over the data (``epochs + privatizer_warm_start`` epochs), so
    that a private run cannot look good only because it read each sentence more often."""
    from splitpriv.roles.robust_top import base_model_of

    train = replace(config.train, privatizer_lr=None, privatizer_warm_start=0, warm_start_blocks=False)
    if equal_passes:
        train = replace(train, epochs=config.train.epochs + config.train.privatizer_warm_start)
    k = config.bottom_layers
    if config.train.warm_start_blocks:
        k, train = 0, replace(train, bottom_lr=TrainConfig.bottom_lr)
    return replace(config, centralized=True, baseline=False, vendor_url=None, denoise="none", robust_top=None,
                   privacy=PrivacyConfig(), bottom_layers=k, train=train, model=base_model_of(config.model))


def run(config: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True, transport=None,
        resume: bool = False) -> dict:
    """Train and evaluate as configured; write ``metrics.json`` (and artifacts) to ``out_dir`` when given
    (``resume``: continue the run in ``out_dir`` on the session ``transport`` is attached to; see :func:`resume`)."""
    config = config.validate()
    if config.task == "causal-lm":
        from splitpriv.causal_run import run_causal

        return run_causal(config, out_dir, progress=progress, transport=transport)
    started = time.perf_counter()
    train, evaluation = load_data(config)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2))
        (Path(out_dir) / LABELS_FILE).write_text(json.dumps(list(train.label_names)))
    if config.centralized:
        result = train_centralized(config, train, evaluation, progress=progress)
    else:
        result = train_split(config, train, evaluation, progress=progress, transport=transport, out_dir=out_dir,
                             resume=resume)
    result.pop("_customer", None)
    losses = result.pop("losses")
    metrics = {
        "accuracy": result.pop("accuracy"),
        "macro_f1": result.pop("macro_f1"),
        "n_train": len(train),
        "n_eval": len(evaluation),
        "train_source": train.source,
        **result,
        **run_record(config, losses),
    }
    if config.baseline and not config.centralized:
        base = train_centralized(reference_config(config), train, evaluation, progress=progress)
        metrics["baseline_accuracy"] = base["accuracy"]
        metrics["baseline_macro_f1"] = base["macro_f1"]
        metrics["baseline_samples_per_s"] = base["train_samples_per_s"]
        metrics["accuracy_loss"] = base["accuracy"] - metrics["accuracy"]
    metrics["wall_time_s"] = time.perf_counter() - started
    if out_dir is not None:
        (Path(out_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def resume(run_dir: str | Path, vendor_url: str | None = None, *, progress: bool = True, **options) -> tuple:
    """Continue the split run in ``run_dir`` after either side was killed: attach to its session (written as soon
    as it opened), restore the customer from its journal after the vendor's completed step and train on; returns
    ``(metrics, transport)``. The vendor receives for each step exactly the vectors it may already hold."""
    run_dir = Path(run_dir)
    saved = run_dir / "customer" / SESSION_FILE
    if not (run_dir / RUN_FILE).is_file() or not saved.is_file():
        raise FileNotFoundError(f"{run_dir} is not a resumable run: {RUN_FILE} or customer/{SESSION_FILE} is missing")
    from splitpriv.protocol import SessionInfo

    config = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    config = replace(config, vendor_url=vendor_url or config.vendor_url)
    if not config.vendor_url or config.centralized or config.task != "sequence-classification":
        raise ValueError("only a split sequence-classification run against a --vendor service can be resumed")
    transport = make_transport(config, **options)
    transport.attach(SessionInfo(**json.loads(saved.read_text())))
    return run(config, run_dir, progress=progress, transport=transport, resume=True), transport


def open_run(run_dir: str | Path, vendor_url: str | None = None, **options):
    """The customer of a finished run, attached to its vendor session (in process from the run folder's vendor
    state, or over HTTP with transport ``options`` such as ``ca_file``), ready for private inference."""
    from splitpriv.protocol import SessionInfo
    from splitpriv.roles.customer import Customer

    run_dir = Path(run_dir)
    for name in (RUN_FILE, SESSION_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished split run: {name} is missing")
    config = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    if config.centralized:
        raise ValueError(f"{run_dir} is a centralized baseline run: nothing to serve privately")
    config = replace(config, vendor_url=vendor_url or config.vendor_url)
    transport = make_transport(config, out_dir=run_dir, **(options if config.vendor_url else {}))
    transport.attach(SessionInfo(**json.loads((run_dir / SESSION_FILE).read_text())))
    if config.task == "causal-lm":
        from splitpriv.roles.causal_customer import CausalCustomer as Customer
    return Customer.restore(transport, run_dir / "customer", config.privacy, config.train)
