# Settings shared by the checkpoint recipes (sourced, not run): data, click-sequence training, text stage, evaluation.
THREADS=${THREADS:-2}
# bf16 autocast on the CPU only where it has bf16 units (AVX-512-BF16 / AMX): elsewhere it is emulated, ~5x slower
BF16=$(grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo && echo --cpu-bf16 || true)
DATA="--folder ../shared/data/cxr_lungs --holdout 0.2 --split-seed 0 \
  --nifti ../shared/data/ct_nifti/example_ct.nii.gz:../shared/data/ct_nifti/example_ct_lung_mask.nii.gz \
  --bce-weight 1 --iou-weight 1 --align-weight 0.1 --max-clicks 24 --augment 2"
SEQ="--hitl-fraction 0.25 --hitl-rounds 1 --click-sampling mixed --deepest-prob 0.8 $BF16 --batch-size 8 \
  --val-clicks 10 --save-every 50 --threads $THREADS"
# the structures' data (v6 and the candidates built on it): lungs of the 49 training CXRs, the CT lung slices, the
# train structures and slices of the TotalSegmentator CT (prepare-ct-structures); click sequences on them
STRUCTURE_DATA="--folder ../shared/data/cxr_lungs --holdout 0.2 --split-seed 0 \
  --nifti ../shared/data/ct_nifti/example_ct.nii.gz:../shared/data/ct_nifti/example_ct_lung_mask.nii.gz \
  --structures data/ct_structures"
STRUCTURE_SEQ="--bce-weight 1 --iou-weight 1 --align-weight 0.1 --max-clicks 24 --augment 1 \
  --hitl-fraction 0.25 --hitl-rounds 1 --click-sampling mixed --deepest-prob 0.8 $BF16 --batch-size 8 \
  --sequence-max 10 --sequence-zero-prob 0.4 --val-clicks 5 --save-every 50 --threads $THREADS --no-progress --resume"
# the data engine's images: 60 NIH training-split CXRs (never the demo or validation images), listed in $NIH_TRAIN
# by biascare_lite_v6.sh prepare
NIH_TRAIN=runs/nih_engine_train.txt
ENGINE="--unlabelled ../shared/data/nih_cxr14_train256/images --unlabelled-only $NIH_TRAIN --data-engine 4"
# language pathway alone (decoder, prompt encoder and image encoder frozen: clicks and boxes stay exactly as they are)
TEXT="--no-hitl --modes text --mode-probs 1 --freeze-vision --epochs 2 --steps-per-epoch 150 --batch-size 8 \
  --lr-language 2e-3 --warmup-steps 5 --initial-prob 1 --val-clicks 1 --threads $THREADS"

evaluate_heldout() {  # evaluate_heldout CHECKPOINT OUT.json: the RITM protocol on the 12 held-out CXRs
  python launch.py eval-clicks --images ../shared/data/cxr_lungs/images --masks ../shared/data/cxr_lungs/masks \
    --mask-suffix _lung.png --only assets/model/heldout_images.txt --checkpoint "$1" --refine-clicks 3 --json "$2"
}

evaluate_structures() {  # evaluate_structures CHECKPOINT OUT.json [eval-structures options]: the RITM protocol on the
  # held-out CT structures of the held-out slices (+ whatever --manifest the options add); OUT.md beside OUT.json
  local checkpoint=$1 out=$2; shift 2
  nice -n 10 python launch.py eval-structures --manifest data/ct_structures/manifest_heldout.json --max-clicks 20 \
    --refine-clicks 3 --seed 0 --checkpoint "$checkpoint" --json "$out" --markdown "${out%.json}.md" "$@"
}

evaluate_against() {  # evaluate_against BASELINE CHECKPOINT OUT.json: all held-out CT items + the 12 held-out CXRs,
  # BASELINE ('stock', 'none' or a checkpoint) in the same run, 1000 bootstrap resamples
  evaluate_structures "$2" "$3" --manifest training/recipes/structures_cxr_heldout.json --bootstrap 1000 --baseline "$1"
}
