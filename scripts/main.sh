#!/usr/bin/env bash
# Set up (idempotent) and run splitpriv's main job on the embedded defaults (MiniLM + SST-2 sample), offline.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -c "
from splitpriv import load_model, split_model
model, _ = load_model()
for k in range(7):
    print(split_model(model, k).disclosure())
"
