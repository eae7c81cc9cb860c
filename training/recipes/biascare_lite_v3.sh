#!/usr/bin/env bash
# The stages that made assets/model/biascare_lite.safetensors v3, from the repository root, on a 2-core CPU.
# v3 = v2 (the committed checkpoint before it, see the model card) + LoRA on the image encoder's last TinyViT stage
# (its trunk's features cached once) + a language-only stage. Usage: bash training/recipes/biascare_lite_v3.sh [stage]
set -euo pipefail
cd "$(dirname "$0")/../.."
V2=${V2:-runs/biascare_lite_v2.safetensors}   # git show 7f6c829:assets/model/biascare_lite.safetensors > $V2
[ -f "$V2" ] || { mkdir -p runs; git show 7f6c829:assets/model/biascare_lite.safetensors > "$V2"; }
THREADS=${THREADS:-2}
# bf16 autocast on the CPU only where it has bf16 units (AVX-512-BF16 / AMX): elsewhere it is emulated, ~5x slower
BF16=$(grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo && echo --cpu-bf16 || true)
DATA="--folder ../shared/data/cxr_lungs --holdout 0.2 --split-seed 0 \
  --nifti ../shared/data/ct_nifti/example_ct.nii.gz:../shared/data/ct_nifti/example_ct_lung_mask.nii.gz \
  --bce-weight 1 --iou-weight 1 --align-weight 0.1 --max-clicks 24 --augment 2"
SEQ="--hitl-fraction 0.25 --hitl-rounds 1 --click-sampling mixed --deepest-prob 0.8 $BF16 --batch-size 8 \
  --val-clicks 10 --save-every 50 --threads $THREADS"

lora() {  # clicks and boxes; LoRA (r 8, alpha 16) on qkv/proj/fc1/fc2 of the last stage; decoder + prompt encoder too
  python launch.py train --name biascare_lora --task seg --init "$V2" $DATA $SEQ \
    --lora --lora-stages 1 --lora-targets qkv,proj,fc1,fc2 --modes click,box --mode-probs 0.5,0.5 \
    --sequence-max 10 --sequence-zero-prob 0.5 --epochs 2 --steps-per-epoch 200 \
    --lr-vision 2e-5 --lr-lora 3e-4 --warmup-steps 10 --resume
}

text() {  # the language pathway alone on the LoRA stage's encoder (its embeddings = head(cached trunk features))
  python launch.py train --name biascare_lora_text --task seg --init runs/biascare_lora/checkpoint.safetensors $DATA \
    --no-hitl --modes text --mode-probs 1 --freeze-vision --epochs 2 --steps-per-epoch 150 --batch-size 8 \
    --lr-language 2e-3 --warmup-steps 5 --initial-prob 1 --val-clicks 1 --threads "$THREADS" --resume \
    --export assets/model/biascare_lite.safetensors
}

evaluate() {  # evaluate CHECKPOINT OUT.json: the RITM protocol on the 12 held-out CXRs
  python launch.py eval-clicks --images ../shared/data/cxr_lungs/images --masks ../shared/data/cxr_lungs/masks \
    --mask-suffix _lung.png --only assets/model/heldout_images.txt --checkpoint "$1" --refine-clicks 3 --json "$2"
}

case "${1:-all}" in
  lora) lora ;;
  text) text ;;
  eval) evaluate "$2" "$3" ;;
  all) lora; text; evaluate assets/model/biascare_lite.safetensors assets/model/eval_biascare_lite.json ;;
  *) echo "usage: $0 [lora|text|eval CKPT OUT|all]" >&2; exit 2 ;;
esac
