"""One training run end to end, for every task: data → (split, privatized) fine-tuning → private evaluation →
metrics.json. The task (:mod:`splitpriv.tasks`) supplies data, scores and its record fields.

Used by ``splitpriv train`` and by the experiment grid; the roles and transports underneath are the same ones a
real deployment uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.runs.config import JOURNAL_DIR, METRICS_FILE, RUN_FILE, SESSION_FILE, RunConfig
from splitpriv.provenance import run_record
from splitpriv.tasks import task_of
from splitpriv.tasks.classification import LABELS_FILE  # noqa: F401  (a run folder's file, named here too)


def load_data(config: RunConfig):
    """The run's ``(train, evaluation)`` data, as its task loads them."""
    return task_of(config.task).load_data(config)


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
                resume: bool = False, on_open=None) -> dict:
    """Split, privatized fine-tuning through ``transport`` (in process by default), then private evaluation.
    ``resume``: ``transport`` is attached to the run's session, whose journal (:mod:`splitpriv.roles.customer.journal`)
    restores the customer after the vendor's completed step. ``on_open()`` runs once the vendor has accepted the
    session and the customer its package (:func:`run` writes the run folder then)."""
    from splitpriv.roles.customer import Customer

    task = task_of(config.task)
    session = config.session_config(task.num_labels(train), len(train))
    transport = transport or make_transport(config, out_dir=out_dir, progress=progress)
    if resume:
        customer = Customer(transport, session, config.privacy, config.train)
    else:
        customer = Customer.open(transport, session, config.privacy, config.train)
    if on_open is not None:
        on_open()
    completed, done = _attach_journal(customer, config, transport, out_dir, resume)
    train, evaluation = task.encode(train, customer.tokenizer, config), task.encode(evaluation, customer.tokenizer,
                                                                                    config)
    result = {"before": task.score(customer, evaluation)} if config.eval_before else {}
    scoring = transport.bytes_sent if config.eval_before else 0  # scoring traffic is not training traffic
    history = customer.fit(*task.fit_args(train), progress=progress, start_step=completed)
    history["losses"] = done + history["losses"]
    # training traffic only: read before private evaluation adds its predict requests
    bytes_per_step = (transport.bytes_sent - scoring) / max(len(history["losses"]), 1)
    result.update(history, **task.score(customer, evaluation, progress=progress))
    result["bytes_sent_per_step"] = bytes_per_step
    result["disclosure"] = transport.session.disclosure
    if config.privacy.cti and customer.cti is not None:
        result["cti_tokens"] = customer.tokenizer.convert_ids_to_tokens(customer.cti.token_ids[:20].tolist())
    if out_dir is not None:
        result.update(save_run(customer, transport, config, out_dir))
    result["_customer"] = customer
    return result


def _attach_journal(customer, config: RunConfig, transport, out_dir, resume: bool) -> tuple[int, list]:
    """Write the session as soon as it is open (a crashed run can still close or resume it) and keep a journal
    where the run can be resumed; on ``resume``, restore the customer after the vendor's completed step."""
    from splitpriv.roles.customer.journal import Journal

    completed, done = 0, []
    if out_dir is not None:
        (Path(out_dir) / "customer").mkdir(parents=True, exist_ok=True)
        write_secret(Path(out_dir) / "customer" / SESSION_FILE, json.dumps(asdict(transport.session), indent=2))
        if (config.vendor_url and config.train.bottom == "frozen" and config.head == "vendor"
                and customer.task.resumable):
            customer.journal = Journal(Path(out_dir) / "customer" / JOURNAL_DIR)
    if resume:
        if customer.journal is None:
            raise ValueError("only a --vendor run with a frozen bottom and the vendor-held head can be resumed")
        completed = int(transport.status()["completed_step"])
        customer.journal.restore(customer, completed)
        kept = customer.journal.losses()
        done = [kept[str(s)] for s in range(1, completed + 1) if str(s) in kept]
    return completed, done


def train_centralized(config: RunConfig, train, evaluation, *, progress: bool = True) -> dict:
    """The unsplit reference: one graph, no noise, no wire."""
    from splitpriv.runs.centralized import CentralizedTrainer

    task = task_of(config.task)
    trainer = CentralizedTrainer(config.session_config(task.num_labels(train), len(train)), config.train,
                                 config.model)
    train, evaluation = task.encode(train, trainer.tokenizer, config), task.encode(evaluation, trainer.tokenizer,
                                                                                   config)
    result = {"before": task.score(trainer, evaluation)} if config.eval_before else {}
    result.update(trainer.fit(*task.fit_args(train), progress=progress))
    return {**result, **task.score(trainer, evaluation, progress=progress)}


def reference_config(config: RunConfig, *, equal_passes: bool = False) -> RunConfig:
    """The centralized non-private LoRA a split run is compared with: the vendor's own model (not a noise-adapted
    one), the same data, seed and budget, no privacy, denoiser or privatizer training. When the customer trains its
    bottom's blocks at home (``warm_start_blocks``) the reference tunes every block (k = 0): a reference whose
    bottom stays frozen would be handicapped by what the private run was allowed. ``equal_passes``: the stricter
    reference that also gets the warm start's passes over the data (``epochs + privatizer_warm_start`` epochs), so
    that a private run cannot look good only because it read each sentence more often."""
    from splitpriv.roles.vendor.robust_top import base_model_of

    train = replace(config.train, privatizer_lr=None, privatizer_warm_start=0, warm_start_blocks=False)
    if equal_passes:
        train = replace(train, epochs=config.train.epochs + config.train.privatizer_warm_start)
    k = config.bottom_layers
    if config.train.warm_start_blocks:
        k, train = 0, replace(train, bottom_lr=TrainConfig.bottom_lr)
    return replace(config, centralized=True, baseline=False, vendor_url=None, denoise="none", robust_top=None,
                   vendor_pretrain=None, privacy=PrivacyConfig(), bottom_layers=k, train=train, model=base_model_of(config.model))


def run(config: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True, transport=None,
        resume: bool = False) -> dict:
    """Train and evaluate as configured; write ``metrics.json`` (and artifacts) to ``out_dir`` when given
    (``resume``: continue the run in ``out_dir`` on the session ``transport`` is attached to; see :func:`resume`)."""
    config = config.validate()
    task = task_of(config.task)
    started = time.perf_counter()
    train, evaluation = task.load_data(config)

    def start_folder() -> None:  # only once the input is accepted: a refused run leaves a finished one in place
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2))
            task.write_data_files(train, Path(out_dir))

    if config.centralized:
        start_folder()
        result = train_centralized(config, train, evaluation, progress=progress)
    else:
        result = train_split(config, train, evaluation, progress=progress, transport=transport, out_dir=out_dir,
                             resume=resume, on_open=start_folder)
    result.pop("_customer", None)
    losses = result.pop("losses")
    metrics = {**task.record(config, train, evaluation, result), **run_record(config, losses)}
    if config.baseline and not config.centralized:
        base = train_centralized(reference_config(config), train, evaluation, progress=progress)
        task.compare(metrics, base)
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
    from splitpriv.contract import SessionInfo

    config = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    config = replace(config, vendor_url=vendor_url or config.vendor_url)
    if not config.vendor_url or config.centralized or not task_of(config.task).resumable:
        raise ValueError("only a split sequence-classification run against a --vendor service can be resumed")
    transport = make_transport(config, **options)
    transport.attach(SessionInfo(**json.loads(saved.read_text())))
    return run(config, run_dir, progress=progress, transport=transport, resume=True), transport


def open_run(run_dir: str | Path, vendor_url: str | None = None, **options):
    """The customer of a finished run, attached to its vendor session (in process from the run folder's vendor
    state, or over HTTP with transport ``options`` such as ``ca_file``), ready for private inference."""
    from splitpriv.contract import SessionInfo
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
    return Customer.restore(transport, run_dir / "customer", config.privacy, config.train)
