#!/usr/bin/env bash
# Issue 4's headline utility numbers: MiniLM + LoRA on a seeded 20,000-sentence slice of the SST-2 train set, one
# epoch, evaluated on the full dev set (872): centralized, split k = 0 without noise, split k = 0 with d_chi
# eta in {5, 10, 20}. One JSON per run (metrics.json without the loss curve) under results/sst2_20k/.
#   bash experiments/sst2_20k.sh [extra splitpriv train args]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export SPLITPRIV_DATA_DIR=${SPLITPRIV_DATA_DIR:-$root/../shared/data}
out=results/sst2_20k
mkdir -p "$out"
common=(--dataset sst2 --train-limit 20000 --epochs 1 --method lora -k 0 --seed 0 --noise-seed 0 --no-progress --json)
run() {
  local name=$1; shift
  [ -s "$out/$name.json" ] && { echo "$name: done"; return; }
  .venv/bin/splitpriv train "${common[@]}" "$@" > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
  python3 -c "import json; m=json.load(open('$out/$name.json')); print('$name', round(m['accuracy'], 4), round(m['macro_f1'], 4), round(m['train_samples_per_s'], 1), 'samples/s')"
}
run centralized --centralized
run split-none --mechanism none
for eta in 5 10 20; do run "split-dchi-eta$eta" --mechanism dchi --eta "$eta"; done
