"""``splitpriv serve``: the vendor service; ``splitpriv close``: end a run's session on its vendor."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from splitpriv.cli.app import app, clean_errors, quiet_libraries



@app.command()
@clean_errors
def serve(
    model: Optional[str] = typer.Option(None, help="Hugging Face id or folder (default: all-MiniLM-L6-v2)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    state_dir: Optional[Path] = typer.Option(None, help="persist sessions here (a restarted service finds them); "
                                             "API keys made with `splitpriv keys create` live here too"),
    max_body_mb: float = typer.Option(64.0, help="request size cap in MiB"),
    checkpoint_every: int = typer.Option(50, help="checkpoint each session every N completed steps (0: only on "
                                         "request and at shutdown, SIGTERM included)"),
    pending_ttl: float = typer.Option(300.0, help="seconds a forward waits for its backward before its graph is "
                                      "freed (a late backward is told to resend the forward)"),
    idle_unload: float = typer.Option(900.0, help="seconds without a call before a session is checkpointed and "
                                      "unloaded from memory (needs --state-dir; its next call reloads it; 0: never)"),
    session_ttl: float = typer.Option(7 * 86400.0, help="seconds without a call before a session is closed and its "
                                      "state deleted (0: never)"),
    batch_predict: int = typer.Option(64, help="predicts of LoRA sessions that arrive together run as one batch of "
                                      "the shared base, up to N sequences (0: one request at a time)"),
    batch_train: bool = typer.Option(False, help="with --batch-predict: training forwards of LoRA sessions that train "
                                     "without dropout (train --no-dropout) batch together too, one shared backward "
                                     "each (off: on a CPU it cost throughput, benchmarks/training_tenants.py)"),
    ssl_certfile: Optional[Path] = typer.Option(None, help="serve HTTPS with this certificate (PEM)"),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="the certificate's private key (PEM)"),
    log_format: str = typer.Option("text", help="text, or json: one JSON object per log line (access log included)"),
    ray: bool = typer.Option(False, "--ray", help="run N replicas on Ray Serve behind its proxy, routed by session "
                             "id (needs --state-dir on storage every replica shares; pip install 'splitpriv[ray]')"),
    replicas: int = typer.Option(2, help="with --ray: how many vendor replicas"),
    ray_address: Optional[str] = typer.Option(None, help="with --ray: the cluster to join ('auto', ray://HOST:PORT; "
                                              "default: start a local Ray instance)"),
    replica_cpus: float = typer.Option(1.0, help="with --ray: CPUs each replica reserves (and its torch threads)"),
    lease_ttl: float = typer.Option(30.0, help="with --ray: seconds a replica's session lease lasts unrenewed (how "
                                    "long a dead replica's sessions wait before another replica takes them)"),
):
    """Run the vendor service (FastAPI + uvicorn); OpenAPI docs at /docs, Prometheus metrics at /metrics."""
    from splitpriv.service.server import serve as run_service

    quiet_libraries()
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"TLS file {path} does not exist")
    if ray:
        return _serve_ray(model=model, host=host, port=port, state_dir=state_dir, max_body_mb=max_body_mb,
                          checkpoint_every=checkpoint_every, pending_ttl=pending_ttl, idle_unload=idle_unload,
                          session_ttl=session_ttl, batch_predict=batch_predict, batch_train=batch_train,
                          ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, replicas=replicas,
                          ray_address=ray_address, replica_cpus=replica_cpus, lease_ttl=lease_ttl)
    run_service(model=model, host=host, port=port, state_dir=str(state_dir) if state_dir else None,
                max_body_bytes=int(max_body_mb * 2**20), checkpoint_every=checkpoint_every, pending_ttl=pending_ttl,
                idle_unload=idle_unload or None, session_ttl=session_ttl or None, batch_predict=batch_predict,
                batch_train=batch_train, ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None, log_format=log_format)


def _serve_ray(*, model, host, port, state_dir, max_body_mb, checkpoint_every, pending_ttl, idle_unload, session_ttl,
               batch_predict, batch_train, ssl_certfile, ssl_keyfile, replicas, ray_address, replica_cpus,
               lease_ttl) -> None:
    """``serve --ray``: deploy on Ray Serve, then wait for Ctrl-C or SIGTERM and take the application down."""
    import signal
    import threading

    if state_dir is None:
        raise typer.BadParameter("--ray needs --state-dir: the replicas' sessions and leases live there (storage "
                                 "every replica's machine mounts)", param_hint="--state-dir")
    if replicas < 1:
        raise typer.BadParameter(f"must be at least 1, got {replicas}", param_hint="--replicas")
    try:
        from splitpriv.service import ray_serve
    except ImportError as exc:
        raise typer.BadParameter(f"Ray Serve is not installed ({exc}): pip install 'splitpriv[ray]'",
                                 param_hint="--ray") from exc
    options = ray_serve.ReplicaOptions(
        state_dir=str(state_dir.resolve()), model=model, lease_ttl=lease_ttl, checkpoint_every=checkpoint_every,
        pending_ttl=pending_ttl, idle_unload=idle_unload or None, session_ttl=session_ttl or None,
        batch_predict=batch_predict, batch_train=batch_train, max_body_bytes=int(max_body_mb * 2**20),
        torch_threads=max(1, int(replica_cpus)))
    url = ray_serve.start(options, address=ray_address, host=host, port=port, replicas=replicas,
                          num_cpus=replica_cpus, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    typer.echo(f"serving {replicas} replica(s) on Ray Serve at {url}", err=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.stop()


@app.command()
@clean_errors
def close(
    run_dir: Path = typer.Option(..., "--run", help="folder of a `splitpriv train --out` run"),
    vendor: Optional[str] = typer.Option(None, help="vendor service URL (default: the run's vendor)"),
    ca_file: Optional[Path] = typer.Option(None, help="CA certificate (PEM) that signed the vendor's TLS certificate"),
):
    """Close the run's session on its vendor (its state there is deleted; the run folder is kept)."""
    import json
    from dataclasses import replace

    from splitpriv.contract.errors import UnknownSession
    from splitpriv.contract import SessionInfo
    from splitpriv.runs.run import RUN_FILE, SESSION_FILE, RunConfig, make_transport

    for name in (RUN_FILE, SESSION_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} holds no {name}: not a split run with a session")
    config = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    config = replace(config, vendor_url=vendor or config.vendor_url)
    options = {"ca_file": str(ca_file)} if ca_file else {}
    transport = make_transport(config, out_dir=run_dir, **options)
    info = SessionInfo(**json.loads((run_dir / SESSION_FILE).read_text()))
    transport.attach(info)
    try:
        transport.close()
    except UnknownSession:
        typer.echo(f"session {info.session_id} was already closed")
        return
    typer.echo(f"closed session {info.session_id}")
