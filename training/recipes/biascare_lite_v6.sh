#!/usr/bin/env bash
# The stage that made assets/model/biascare_lite.safetensors v6 (issue 16: clicks on any structure), from the
# repository root, on a 2-core CPU: v5 (v4's segmentation + the v5 findings heads; commit 6df680b) with its encoder
# frozen (embeddings cached once, so the findings heads stay valid), the mask decoder, prompt encoder and language
# pathway trained on many structures at once:
#   - the 31 *train* structures of the TotalSegmentator CT on its *train* slices (prepare-ct-structures: the 10
#     held-out structures and the held-out slice bands z 16-23, 48-55, 80-87 are never read);
#   - the lungs of the 49 training CXRs (v4's split: the 12 of heldout_images.txt are never read) + flips + 1
#     augmented variant each, and v4's CT lung slices (replay: lungs stay as good as v4);
#   - the data engine (training/data_engine.py): the stock model's box predictions on random boxes of those images
#     and of 60 NIH training-split CXRs (never the demo or validation images) as click/box targets, none covering a
#     held-out structure;
# clicks, boxes and text (the structure's name) as prompts, RITM-style click sequences.
# Usage: bash training/recipes/biascare_lite_v6.sh [prepare|train|replay|text|eval CKPT OUT|adopt|all]
# (adopt: the trained checkpoint becomes the shipped default — only after its evaluation met the lungs' bar — with
# the labels it was trained on in its header, as biascare_lite_v6_1: a box of any other label is answered by the
# stock LiteMedSAM decoder, training/recipes/box_labels.py; the tensors are v6's)
set -euo pipefail
cd "$(dirname "$0")/../.."
source training/recipes/settings.sh
V5=${V5:-runs/biascare_lite_v5.safetensors}
[ -f "$V5" ] || { mkdir -p runs; git show 6df680b:assets/model/biascare_lite.safetensors > "$V5"; }

prepare() {  # the CT slices + labels + split; the 60 NIH images of the engine (first 60 train-split stems)
  python launch.py prepare-ct-structures --out data/ct_structures
  python - "$NIH_TRAIN" <<'EOF'
import json, sys
stems = json.load(open("assets/model/findings_split.json"))["train"]
open(sys.argv[1], "w").write("\n".join(sorted(stems)[:60]) + "\n")
EOF
}

train() {
  python launch.py train --name biascare_lite_v6 --task seg --init "$V5" $STRUCTURE_DATA $ENGINE $STRUCTURE_SEQ \
    --modes click,box,text --mode-probs 0.55,0.3,0.15 \
    --lr-vision 1e-4 --lr-language 5e-4 --warmup-steps 20 --epochs 1 --steps-per-epoch "${STEPS:-1500}"
}

replay() {  # stage 2: clicks and boxes only, lower lr, ground truth only (no engine targets): the lungs back
  python launch.py train --name biascare_lite_v6_replay --task seg --init runs/biascare_lite_v6/checkpoint.safetensors \
    $STRUCTURE_DATA $STRUCTURE_SEQ --modes click,box --mode-probs 0.6,0.4 \
    --lr-vision 3e-5 --warmup-steps 10 --epochs 1 --steps-per-epoch "${REPLAY_STEPS:-500}"
}

text() {  # stage 3: the language pathway alone (decoder, prompt encoder, encoder frozen): lungs and structure names
  python launch.py train --name biascare_lite_v6 --runs-dir runs/final --task seg \
    --init runs/biascare_lite_v6_replay/checkpoint.safetensors \
    $STRUCTURE_DATA --augment 1 --align-weight 0.1 $TEXT --no-progress --resume
}

evaluate() {  # evaluate CHECKPOINT OUT.json: held-out CT structures on held-out slices + the 12 held-out CXRs
  evaluate_structures "$1" "$2" --manifest training/recipes/structures_cxr_heldout.json --limit ct_heldout=3 --bootstrap 2000
}

case "${1:-all}" in
  prepare) prepare ;;
  train) train ;;
  eval) evaluate "$2" "$3" ;;
  replay) replay ;;
  text) text ;;
  adopt) python training/recipes/box_labels.py runs/final/biascare_lite_v6/checkpoint.safetensors \
           data/ct_structures/split.json biascare_lite_v6_1 assets/model/biascare_lite.safetensors ;;
  all) prepare; train; replay; text
       evaluate runs/final/biascare_lite_v6/checkpoint.safetensors assets/model/eval_structures_v6.json ;;
  *) echo "usage: $0 [prepare|train|replay|text|eval CKPT OUT|adopt|all]" >&2; exit 2 ;;
esac
