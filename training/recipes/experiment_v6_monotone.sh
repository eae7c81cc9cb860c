#!/usr/bin/env bash
# Experiment after v6_1 (issue 16: on CT structures never trained on, clicks hurt — a negative click on a thin false-
# positive rim of a kidney or the gallbladder carves out a third of it): train with the hinge
# max(0, dice after a click − dice before) on every corrective click (`train --monotone-weight W`), the encoder
# frozen, v6's data (ground truth only, no engine targets), a replay-style fine-tune from the shipped v6_1:
# 400 steps, clicks 60 % / boxes 40 %, lr 3e-5. W = 0 is the same fine-tune without the hinge (the control).
# Usage: bash training/recipes/experiment_v6_monotone.sh [train W NAME | eval CKPT OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source training/recipes/settings.sh
V6_1=${V6_1:-runs/biascare_lite_v6_1.safetensors}  # v6's tensors with its box_labels: the fine-tune keeps them
[ -f "$V6_1" ] || { mkdir -p runs; git show adcb5fb:assets/model/biascare_lite.safetensors > "$V6_1"; }

train() {  # train W NAME
  [ -f data/ct_structures/split.json ] || python launch.py prepare-ct-structures --out data/ct_structures
  python launch.py train --name "$2" --task seg --init "$V6_1" $STRUCTURE_DATA $STRUCTURE_SEQ --modes click,box \
    --mode-probs 0.6,0.4 --lr-vision 3e-5 --warmup-steps 10 --epochs 1 --steps-per-epoch "${STEPS:-400}" \
    --monotone-weight "$1"
}

evaluate() {  # all 102 held-out CT items + the 12 held-out CXRs, BASELINE (default: the shipped v6_1) in the same run
  evaluate_against "${BASELINE:-$V6_1}" "$1" "$2"
}

case "${1:-}" in
  train) train "$2" "$3" ;;
  eval) evaluate "$2" "$3" ;;
  *) echo "usage: $0 [train W NAME | eval CKPT OUT]" >&2; exit 2 ;;
esac
