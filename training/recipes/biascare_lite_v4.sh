#!/usr/bin/env bash
# The stages that made assets/model/biascare_lite.safetensors v4, from the repository root, on a 2-core CPU:
# v3 (commit 1598232) + LoRA on the image encoder's last *two* TinyViT stages (the frozen trunk = patch embedding and
# stages 1-2, its output cached once) + a language-only stage on the new encoder + the classifier heads on it.
# Usage: bash training/recipes/biascare_lite_v4.sh [lora|text|heads|eval CKPT OUT|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
V3=${V3:-runs/biascare_lite_v3.safetensors}
[ -f "$V3" ] || { mkdir -p runs; git show 1598232:assets/model/biascare_lite.safetensors > "$V3"; }
source training/recipes/settings.sh

lora() {  # clicks and boxes; LoRA (r 8, alpha 16) on qkv/proj/fc1/fc2 of stages 3 and 4; decoder + prompt encoder too
  python launch.py train --name biascare_lora2 --task seg --init "$V3" $DATA $SEQ \
    --lora --lora-stages 2 --lora-targets qkv,proj,fc1,fc2 --modes click,box --mode-probs 0.5,0.5 \
    --sequence-max 10 --sequence-zero-prob 0.5 --epochs 2 --steps-per-epoch 200 \
    --lr-vision 2e-5 --lr-lora 3e-4 --warmup-steps 10 --resume
}

text() {  # the language pathway alone on the new encoder
  python launch.py train --name biascare_lora2_text --task seg --init runs/biascare_lora2/checkpoint.safetensors \
    $DATA $TEXT --resume
}

heads() {  # the CXR-LT heads again, on the new encoder's embeddings (logit-adjusted BCE, 300 full-batch epochs)
  python launch.py train --name biascare_lite_v4 --task cls --init runs/biascare_lora2_text/checkpoint.safetensors \
    --cls-csv ../shared/data/nih_cxr14_sample/labels_cxrlt2024_format.csv --threads "$THREADS" \
    --export assets/model/biascare_lite.safetensors
}

case "${1:-all}" in
  lora) lora ;;
  text) text ;;
  heads) heads ;;
  eval) evaluate_heldout "$2" "$3" ;;
  all) lora; text; heads; evaluate_heldout assets/model/biascare_lite.safetensors assets/model/eval_biascare_lite.json ;;
  *) echo "usage: $0 [lora|text|heads|eval CKPT OUT|all]" >&2; exit 2 ;;
esac
