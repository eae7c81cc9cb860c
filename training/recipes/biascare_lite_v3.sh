#!/usr/bin/env bash
# The stages that made assets/model/biascare_lite.safetensors v3 (superseded by v4: biascare_lite_v4.sh; "all" here
# overwrites the shipped checkpoint with v3), from the repository root, on a 2-core CPU.
# v3 = v2 (the committed checkpoint before it, see the model card) + LoRA on the image encoder's last TinyViT stage
# (its trunk's features cached once) + a language-only stage. Usage: bash training/recipes/biascare_lite_v3.sh [stage]
set -euo pipefail
cd "$(dirname "$0")/../.."
V2=${V2:-runs/biascare_lite_v2.safetensors}   # git show 7f6c829:assets/model/biascare_lite.safetensors > $V2
[ -f "$V2" ] || { mkdir -p runs; git show 7f6c829:assets/model/biascare_lite.safetensors > "$V2"; }
source training/recipes/settings.sh

lora() {  # clicks and boxes; LoRA (r 8, alpha 16) on qkv/proj/fc1/fc2 of the last stage; decoder + prompt encoder too
  python launch.py train --name biascare_lora --task seg --init "$V2" $DATA $SEQ \
    --lora --lora-stages 1 --lora-targets qkv,proj,fc1,fc2 --modes click,box --mode-probs 0.5,0.5 \
    --sequence-max 10 --sequence-zero-prob 0.5 --epochs 2 --steps-per-epoch 200 \
    --lr-vision 2e-5 --lr-lora 3e-4 --warmup-steps 10 --resume
}

text() {  # the language pathway alone on the LoRA stage's encoder (its embeddings = head(cached trunk features))
  python launch.py train --name biascare_lora_text --task seg --init runs/biascare_lora/checkpoint.safetensors $DATA \
    $TEXT --resume --export assets/model/biascare_lite.safetensors
}

case "${1:-all}" in
  lora) lora ;;
  text) text ;;
  eval) evaluate_heldout "$2" "$3" ;;
  all) lora; text; evaluate_heldout assets/model/biascare_lite.safetensors assets/model/eval_biascare_lite.json ;;
  *) echo "usage: $0 [lora|text|eval CKPT OUT|all]" >&2; exit 2 ;;
esac
