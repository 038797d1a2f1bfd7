#!/usr/bin/env bash
# Set up (idempotent), then splitpriv's main job on the embedded defaults, offline: a split, privatized LoRA
# fine-tune of all-MiniLM-L6-v2 on the 4,000-sentence SST-2 sample shipped in the package (vendor and customer in
# one process, every message through the wire encoding), evaluated by private inference on the SST-2 dev set and
# printed next to the centralized non-private baseline of the same config. Extra arguments go to `splitpriv train`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# OpenMP busy-waiting makes small torch ops 10-60x slower on shared cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/splitpriv train --dataset sst2-sample --method lora --bottom-layers 2 \
  --mechanism dchi --eta 20 --epochs 2 --baseline --out runs/main "$@"
