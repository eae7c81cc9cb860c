#!/usr/bin/env bash
# assets/model/biascare_lite.safetensors v5 = v4 (commit 4aa4ed5) with new built-in findings heads, from the
# repository root, on a 2-core CPU (about 25-50 min, almost all of it the one encoder pass per image of step 1).
# The segmentation pathway (encoder, prompt encoder, mask decoder, language pathway) is v4's, tensor for tensor.
# Usage: bash training/recipes/biascare_lite_v5.sh [features|choose|train|eval|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
V4=${V4:-runs/biascare_lite_v4.safetensors}
[ -f "$V4" ] || { mkdir -p runs; git show 4aa4ed5:assets/model/biascare_lite.safetensors > "$V4"; }
THREADS=${THREADS:-1}
# the probe's settings, chosen on the validation split by step 2 (runs/findings_v5/experiments.json)
LOSS=${LOSS:-asl}
WD=${WD:-0.01}
BLOCKS=${BLOCKS:-mean,std,quad}

features() {  # 1: the patient split (assets/model/findings_split.json + id lists), the cached pooled features
  PYTHONPATH=. nice -n 10 python training/recipes/findings_features.py --threads "$THREADS" --flips 0
}

choose() {  # 2: loss x L2 x feature set, validation macro AUROC only (the demo split is not read)
  PYTHONPATH=. nice -n 10 python training/recipes/findings_experiments.py --threads "$THREADS" --weight-decays 1e-2,1e-1,1,10 \
    --out runs/findings_v5/experiments.json
}

train() {  # 3-4: the probe on the train split, Platt per class on validation, the cards, the checkpoint
  PYTHONPATH=. nice -n 10 python -m training.findings_train --name biascare_lite_v5 --init "$V4" \
    --loss "$LOSS" --weight-decay "$WD" --blocks "$BLOCKS" --epochs 300 --lr 1e-2 --threads "$THREADS" --resume \
    --export assets/model/biascare_lite.safetensors
}

evaluate() {  # 5: validation and, once, the demo split; metrics JSON and figures
  PYTHONPATH=. nice -n 10 python training/recipes/findings_eval.py --checkpoint assets/model/biascare_lite.safetensors \
    --json assets/model/eval_findings_v5.json --figures assets/model --threads "$THREADS"
}

case "${1:-all}" in
  features) features ;;
  choose) choose ;;
  train) train ;;
  eval) evaluate ;;
  all) features; choose; train; evaluate ;;
  *) echo "usage: $0 [features|choose|train|eval|all]" >&2; exit 2 ;;
esac
