"""``splitpriv keys create|list|revoke``: the vendor's API keys (:mod:`splitpriv.service.accounts`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from splitpriv.cli.app import app, clean_errors

keys_app = typer.Typer(no_args_is_help=True, help="The vendor's API keys: once one exists, opening a session needs one.")
app.add_typer(keys_app, name="keys")

STATE_DIR = typer.Option(..., "--state-dir", help="the vendor's state dir (the one `splitpriv serve --state-dir` uses)")


@keys_app.command("create")
@clean_errors
def create(
    state_dir: Path = STATE_DIR,
    name: str = typer.Option(..., help="who the key is for (letters, digits, ._@-)"),
    max_sessions: int = typer.Option(4, help="open sessions at once (0: no limit)"),
    max_pending: int = typer.Option(2, help="forwards waiting for their backward at once (0: no limit)"),
    max_tokens_per_request: int = typer.Option(128 * 256, help="batch x tokens of one request (0: no limit)"),
    max_bytes_per_day: int = typer.Option(32 * 2**30, help="request bytes per UTC day (0: no limit)"),
    admin: bool = typer.Option(False, "--admin", help="may also read /metrics"),
):
    """Create an API key; the key itself is printed once, on the last line (only its sha256 is stored)."""
    from splitpriv.service.accounts import KeyStore, Quotas

    quotas = Quotas(max_sessions=max_sessions, max_pending=max_pending, max_tokens_per_request=max_tokens_per_request,
                    max_bytes_per_day=max_bytes_per_day)
    key, record = KeyStore(state_dir).create(name, quotas, admin=admin)
    typer.echo(f"created API key {record.name!r} (id {record.key_id}) in {state_dir}; it is shown only now. "
               "Customers send it with --api-key or SPLITPRIV_API_KEY:", err=True)
    typer.echo(key)


@keys_app.command("list")
@clean_errors
def list_keys(state_dir: Path = STATE_DIR, as_json: bool = typer.Option(False, "--json")):
    """Every key: id, name, created, revoked, quotas (never the key)."""
    from splitpriv.service.accounts import KeyStore

    records = [r.to_dict() for r in KeyStore(state_dir).keys().values()]
    for r in records:
        r.pop("sha256")
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    if not records:
        typer.echo(f"no API keys in {state_dir}: its vendor lets anyone open sessions")
    for r in records:
        state = f"revoked {r['revoked']}" if r["revoked"] else "active"
        quotas = ", ".join(f"{k}={'none' if v is None else v}" for k, v in r["quotas"].items())
        typer.echo(f"{r['key_id']}  {r['name']}  created {r['created']}  {state}{'  admin' if r['admin'] else ''}  "
                   f"{quotas}")


@keys_app.command("revoke")
@clean_errors
def revoke(name_or_id: str = typer.Argument(..., help="the key's name or id"), state_dir: Path = STATE_DIR):
    """Revoke a key: it opens no more sessions, and the sessions it opened answer 403 from now on."""
    from splitpriv.service.accounts import KeyStore

    for record in KeyStore(state_dir).revoke(name_or_id):
        typer.echo(f"revoked API key {record.name!r} (id {record.key_id})")
