#!/usr/bin/env bash
# Set up (idempotent), then splitpriv's main job, offline, in under 5 minutes on 2 cores: the k = 2 bottleneck
# preset (results/frontier.json's `privatizer_depth` recipe: the customer holds 2 of MiniLM's 6 blocks, warm-starts
# them and an r = 4 bottleneck privatizer at home on its own labels with d_chi eta = 4 noise in the loop, then trains
# the vendor's LoRA top over the wire, every message through the wire encoding), scaled down to 2,000 sentences of
# the SST-2 sample shipped in the package and 2 warm-start epochs; private inference on the full SST-2 dev set next
# to the centralized non-private baseline; then every attack that applies, through the run's final bottom and
# privatizer, on 100 dev sentences, trained on the public text it finds (the WikiText-2 sample shipped in the
# package, or the full WikiText-2 when SPLITPRIV_DATA_DIR or ../shared/data has it, and the sample's rows the
# customer did not use), the inverter scaled down to 2 epochs; the label attack on the gradients the customer
# returns; a summary whose every figure comes from the run's records. Extra arguments go to `splitpriv train`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# OpenMP busy-waiting makes small torch ops 10-60x slower on shared cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [[ -z "${SPLITPRIV_DATA_DIR:-}" && -d "$root/../shared/data/wikitext2" ]]; then
  export SPLITPRIV_DATA_DIR="$root/../shared/data"
fi
splitpriv=.venv/bin/splitpriv
echo "[1/3] split training (customer: 2 blocks + privatizer warm-started at home; vendor: LoRA top), then the" \
  "centralized baseline; scaled down from the frontier's preset: 2,000 of the sample's 4,000 sentences, 2 warm-start" \
  "epochs instead of 3"
$splitpriv train --dataset sst2-sample --train-limit 2000 --method lora --bottom-layers 2 \
  --mechanism dchi --eta 4 --privatizer bottleneck:r=4,clip=1 --privatizer-warm-start 2 --privatizer-lr 0.01 \
  --warm-start-blocks --bottom-lr 1e-4 --epochs 1 --baseline --out runs/main "$@"
rm -f runs/main/privacy.json runs/main/labels-attack.json
echo "[2/3] token and set-level attacks on 100 dev sentences, through the run's final bottom and privatizer;" \
  "scaled down: the inverter trains 2 epochs instead of 3"
# both cores for the inverters: nothing else runs beside the main job (the experiment grids keep 1 thread)
$splitpriv attack --run runs/main --attack all --limit 100 --adaptive-epochs 2 --adaptive-threads 0 --json \
  > runs/main/privacy.json
echo "[3/3] label attack on the gradients the customer returns"
read -r head label_dp < <(.venv/bin/python -c "import json; c = json.load(open('runs/main/run.json'));
print(c['head'], c['privacy']['label_dp_epsilon'] or '')")
$splitpriv attack --run runs/main --attack label --limit 100 --head "$head" ${label_dp:+--label-dp-epsilon "$label_dp"} \
  --json > runs/main/labels-attack.json
.venv/bin/python -m splitpriv.runs.summary runs/main
