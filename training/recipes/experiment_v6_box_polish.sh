#!/usr/bin/env bash
# Experiments after v6 (issue 16: box prompts on structures never trained on fall below the stock model's on the
# kidneys and the liver), from v6 with the encoder frozen, on v6's training data only (no held-out structure, slice
# or CXR is read). Each is measured with `eval CKPT OUT` (all 102 held-out CT items, stock in the same run); see
# bench/RESULTS.md, "Box experiments after v6". None became the default.
#   polish: boxes as often as clicks, ground truth + the data engine's targets (the stock model's box answers on
#           random boxes: distillation of its box behaviour on arbitrary regions), lr 3e-5, 400 steps.
#   boxes:  ground truth only (no engine), boxes 60 % of the prompt starts, lr 2e-5, 400 steps.
#   wise A: no training: v6's prompt encoder + decoder interpolated toward the stock model's (WiSE-FT), weight A on v6.
# Usage: bash training/recipes/experiment_v6_box_polish.sh [polish|boxes|wise A|eval CKPT OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source training/recipes/settings.sh
V6=${V6:-runs/biascare_lite_v6.safetensors}
[ -f "$V6" ] || { mkdir -p runs; git show 045dba4:assets/model/biascare_lite.safetensors > "$V6"; }
[ -f "$NIH_TRAIN" ] || bash training/recipes/biascare_lite_v6.sh prepare

polish() {
  python launch.py train --name biascare_lite_v7_polish --task seg --init "$V6" $STRUCTURE_DATA $ENGINE $STRUCTURE_SEQ \
    --modes click,box --mode-probs 0.5,0.5 --lr-vision 3e-5 --warmup-steps 10 --epochs 1 --steps-per-epoch 400
}

boxes() {
  python launch.py train --name biascare_lite_v7_boxes --task seg --init "$V6" $STRUCTURE_DATA $STRUCTURE_SEQ \
    --modes click,box --mode-probs 0.4,0.6 --lr-vision 2e-5 --warmup-steps 10 --epochs 1 --steps-per-epoch 400
}

evaluate() {  # all held-out CT items (the recipes' own evaluation takes 3 per structure), stock in the same run
  evaluate_structures "$1" "$2" --bootstrap 1000
}

case "${1:-}" in
  polish) polish ;;
  boxes) boxes ;;
  wise) python training/recipes/interpolate_decoder.py "$2" "$V6" "runs/v6_wise$2.safetensors" ;;
  eval) evaluate "$2" "$3" ;;
  *) echo "usage: $0 [polish|boxes|wise A|eval CKPT OUT]" >&2; exit 2 ;;
esac
