#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
if [ -z "${SPLITPRIV_DATA_DIR:-}" ] && [ -d "$root/../shared/data" ]; then
  export SPLITPRIV_DATA_DIR="$root/../shared/data"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# OpenMP busy-waiting makes small torch ops 10-60x slower on shared cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (a green run must have run tests)" >&2
  exit 1
fi
exit "$rc"
