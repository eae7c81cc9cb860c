#!/usr/bin/env bash
# Experiment after v6_1 (issue 16: clicks on CT structures never trained on, mIoU@5 0.846 < 0.85, clicks hurt on 4 of
# 10): more shapes of the same train structures — coronal and sagittal cuts of the CT's *train* slabs
# (`prepare-ct-structures --planes`: the held-out slice bands are in no cut, held-out structures are never targets) —
# added to v6's training data, the encoder frozen:
#   train: a click-weighted fine-tune from the shipped v6_1 (400 steps, clicks 70 %, lr 3e-5);
#   full:  v6's own three stages (biascare_lite_v6.sh train, replay, text) from v5 with the cuts added.
# Usage: bash training/recipes/experiment_v7_reformats.sh [prepare|train|full|eval CKPT OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source training/recipes/settings.sh
V6_1=${V6_1:-runs/biascare_lite_v6_1.safetensors}  # v6's tensors with its box_labels: the fine-tune keeps them
[ -f "$V6_1" ] || { mkdir -p runs; git show adcb5fb:assets/model/biascare_lite.safetensors > "$V6_1"; }
V5=${V5:-runs/biascare_lite_v5.safetensors}
[ -f "$V5" ] || { mkdir -p runs; git show 6df680b:assets/model/biascare_lite.safetensors > "$V5"; }
REFORMATS=data/ct_reformats

prepare() {
  [ -f data/ct_structures/split.json ] || python launch.py prepare-ct-structures --out data/ct_structures
  python launch.py prepare-ct-structures --planes coronal,sagittal --stride "${STRIDE:-4}" --out "$REFORMATS"
}

train() {
  python launch.py train --name biascare_lite_v7_reformats --task seg --init "$V6_1" $STRUCTURE_DATA \
    --structures "$REFORMATS" $STRUCTURE_SEQ --modes click,box --mode-probs 0.7,0.3 --lr-vision 3e-5 \
    --warmup-steps 10 --epochs 1 --steps-per-epoch "${STEPS:-400}"
}

full() {  # v6's stages and settings (biascare_lite_v6.sh), the cuts added to each; box_labels written after, as v6_1's
  python launch.py train --name biascare_lite_v7r --task seg --init "$V5" $STRUCTURE_DATA --structures "$REFORMATS" \
    $ENGINE $STRUCTURE_SEQ --modes click,box,text --mode-probs 0.55,0.3,0.15 \
    --lr-vision 1e-4 --lr-language 5e-4 --warmup-steps 20 --epochs 1 --steps-per-epoch "${STEPS:-1500}"
  python launch.py train --name biascare_lite_v7r_replay --task seg --init runs/biascare_lite_v7r/checkpoint.safetensors \
    $STRUCTURE_DATA --structures "$REFORMATS" $STRUCTURE_SEQ --modes click,box --mode-probs 0.6,0.4 \
    --lr-vision 3e-5 --warmup-steps 10 --epochs 1 --steps-per-epoch "${REPLAY_STEPS:-500}"
  python launch.py train --name biascare_lite_v7r --runs-dir runs/final --task seg \
    --init runs/biascare_lite_v7r_replay/checkpoint.safetensors $STRUCTURE_DATA --structures "$REFORMATS" \
    --augment 1 --align-weight 0.1 $TEXT --no-progress --resume
  python training/recipes/box_labels.py runs/final/biascare_lite_v7r/checkpoint.safetensors \
    data/ct_structures/split.json,"$REFORMATS"/split.json biascare_lite_v7r runs/biascare_lite_v7r.safetensors
}

evaluate() {  # all 102 held-out CT items + the 12 held-out CXRs, BASELINE (default: the shipped v6_1) in the same run
  evaluate_against "${BASELINE:-$V6_1}" "$1" "$2"
}

case "${1:-}" in
  prepare) prepare ;;
  train) train ;;
  full) full ;;
  eval) evaluate "$2" "$3" ;;
  *) echo "usage: $0 [prepare|train|full|eval CKPT OUT]" >&2; exit 2 ;;
esac
