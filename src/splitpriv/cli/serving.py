"""``splitpriv serve``: the vendor service."""

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
    state_dir: Optional[Path] = typer.Option(None, help="persist sessions here (a restarted service finds them)"),
    max_body_mb: float = typer.Option(64.0, help="request size cap in MiB"),
):
    """Run the vendor service (FastAPI + uvicorn); OpenAPI docs at /docs."""
    from splitpriv.service.app import serve as run_service

    quiet_libraries()
    run_service(model=model, host=host, port=port, state_dir=str(state_dir) if state_dir else None,
                max_body_bytes=int(max_body_mb * 2**20))

