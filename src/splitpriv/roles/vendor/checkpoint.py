"""The vendor's checkpoint store: the on-disk format of a session, written atomically, and its optimizer state.

Each session lives in ``DIR/sessions/<session_id>/``. One checkpoint is a directory ``ckpt-<step>-<random>/``
holding

* ``top/``: the tuned top as :meth:`TunedTop.save` writes it (``peft`` format for LoRA),
* ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()`` (AdamW moments and step counts),
* ``session.json``: the session config, the sha256 of the token (never the token), the completed step, the
  trainable weights' names in optimizer order, and the optimizer's and scheduler's non-tensor state as JSON,
* ``last_backward.msg``: the answer to the last backward, so that its retry is harmless across a restart too.

No pickle anywhere. A checkpoint directory is written under a temporary name, fsynced and renamed into place, then
the ``CURRENT`` file naming it is replaced atomically (``os.replace``); older checkpoints are removed after that, so
a crash at any moment leaves the previous or the new checkpoint, never a mix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from splitpriv.contract import BackwardResult, decode
from splitpriv.roles.vendor.session import VendorSession

CHECKPOINT_FORMAT = 1
SESSIONS_DIR = "sessions"
CURRENT = "CURRENT"
SESSION_FILE = "session.json"
OPTIMIZER_FILE = "optimizer.safetensors"
LAST_BACKWARD_FILE = "last_backward.msg"
TOP_DIR = "top"


def write_state(session: VendorSession, directory: Path, model: str | None) -> None:
    """Write ``session``'s state into the empty directory ``directory`` (see the module docstring)."""
    from safetensors.torch import save_file

    session.tuned.save(directory / TOP_DIR)
    tensors, optimizer_json = _flatten_optimizer(session.optimizer.state_dict())
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    if session.last_backward is not None:
        (directory / LAST_BACKWARD_FILE).write_bytes(session.last_backward.to_bytes())
    meta = {
        "format": CHECKPOINT_FORMAT,
        "session_id": session.session_id,
        "token_sha256": session.token_sha256,
        "owner": session.owner,
        "model": model,
        "config": session.config.to_dict(),
        "completed_step": session.completed_step,
        "parameters": session.param_names(),
        "optimizer": optimizer_json,
        "scheduler": session.scheduler.state_dict(),
    }
    (directory / SESSION_FILE).write_text(json.dumps(meta, indent=1))


def read_state(session: VendorSession, directory: Path, meta: dict) -> None:
    """Load into ``session`` the optimizer, scheduler, step and last backward answer written by :func:`write_state`."""
    from safetensors.torch import load_file

    if meta["parameters"] != session.param_names():
        raise ValueError(f"{directory}: the checkpoint's trainable weights do not match the session's")
    session.optimizer.load_state_dict(_unflatten_optimizer(load_file(str(directory / OPTIMIZER_FILE)), meta["optimizer"]))
    session.scheduler.load_state_dict(meta["scheduler"])
    session.completed_step = int(meta["completed_step"])
    last = directory / LAST_BACKWARD_FILE
    session.last_backward = decode(last.read_bytes(), expect=BackwardResult) if last.is_file() else None
    if session.last_backward is not None and session.last_backward.step != session.completed_step:
        raise ValueError(f"{last} answers step {session.last_backward.step}, not {session.completed_step}")


class CheckpointStore:
    """The sessions' checkpoints under ``state_dir`` (``state_dir/sessions/<session_id>/``)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir) / SESSIONS_DIR
        self.root.mkdir(parents=True, exist_ok=True)

    def session_dir(self, session_id: str) -> Path:
        return self.root / session_id

    def session_dirs(self) -> list[Path]:
        """Every session's directory, in name order."""
        return [p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")]

    def save(self, session: VendorSession, model: str | None) -> Path:
        """Write a new checkpoint of ``session`` (whose lock the caller holds), commit it and remove older ones;
        returns its directory."""
        root = self.session_dir(session.session_id)
        root.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{session.completed_step:08d}-{secrets.token_hex(4)}"
        tmp = root / f".tmp-{name}"
        tmp.mkdir()
        try:
            write_state(session, tmp, model)
            _fsync_tree(tmp)
            final = root / name
            os.replace(tmp, final)
            pointer = root / f".tmp-{CURRENT}-{secrets.token_hex(4)}"
            pointer.write_text(name)
            _fsync_file(pointer)
            os.replace(pointer, root / CURRENT)
            _fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _remove_all_but(root, (name, CURRENT))
        return final

    def committed(self, root: Path, model: str | None) -> tuple[Path, dict] | None:
        """The committed checkpoint in the session directory ``root`` and its ``session.json``, checked against this
        format and ``model``; None when the session's first checkpoint never committed."""
        pointer = root / CURRENT
        if not pointer.is_file():
            return None
        directory = root / pointer.read_text().strip()
        meta = json.loads((directory / SESSION_FILE).read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, this vendor reads {CHECKPOINT_FORMAT}")
        if meta["session_id"] != root.name:
            raise ValueError(f"{directory} belongs to session {meta['session_id']!r}")
        if meta.get("model") != model:
            raise ValueError(f"session was trained on model {meta.get('model')!r}, this vendor serves {model!r}")
        return directory, meta

    def keep_only(self, directory: Path) -> None:
        """Remove everything in ``directory``'s session directory but it and ``CURRENT`` (an interrupted write)."""
        _remove_all_but(directory.parent, (directory.name, CURRENT))

    def delete(self, session_id: str) -> None:
        shutil.rmtree(self.session_dir(session_id), ignore_errors=True)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` as safetensors tensors (``state.<index>.<name>``) + JSON for everything else."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups, tuples = [], []
    for group in state["param_groups"]:
        groups.append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items()})
        tuples.append(sorted(k for k, v in group.items() if isinstance(v, tuple)))
    return tensors, {"state": scalars, "param_groups": groups, "tuple_keys": tuples}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in data["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k in keys else v for k, v in group.items()}
              for group, keys in zip(data["param_groups"], data["tuple_keys"])]
    return {"state": state, "param_groups": groups}


def _remove_all_but(root: Path, keep: tuple[str, ...]) -> None:
    for path in root.iterdir():
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            _fsync_file(path)
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CURRENT",
    "LAST_BACKWARD_FILE",
    "OPTIMIZER_FILE",
    "SESSIONS_DIR",
    "SESSION_FILE",
    "TOP_DIR",
    "CheckpointStore",
    "read_state",
    "write_state",
]
