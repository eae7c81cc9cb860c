"""Weight-space interpolation of a checkpoint's prompt encoder and mask decoder toward the stock LiteMedSAM's
(WiSE-FT, Wortsman et al. 2022): w = alpha * checkpoint + (1 - alpha) * stock; the image encoder, language pathway
and classifier heads stay the checkpoint's. An experiment of issue 16 (bench/RESULTS.md, "Box experiments after v6").

    python training/recipes/interpolate_decoder.py ALPHA CHECKPOINT OUT.safetensors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from core_model.model import build_model  # noqa: E402

INTERPOLATED = ("mask_decoder.", "prompt_encoder.")


def interpolate(alpha: float, checkpoint: Path, out: Path) -> str:
    stock = build_model(None).state_dict()
    tensors = {}
    with safe_open(str(checkpoint), "pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            tensor = f.get_tensor(key)
            if key.startswith(INTERPOLATED) and tensor.is_floating_point():
                tensor = alpha * tensor + (1 - alpha) * stock[key].to(tensor.dtype)
            tensors[key] = tensor.contiguous()
    info = json.loads(metadata["biascare_info"])
    info["version"] = f"{info['version']}_wise{round(alpha * 100)}"
    metadata["biascare_info"] = json.dumps(info)
    save_file(tensors, str(out), metadata=metadata)
    return info["version"]


if __name__ == "__main__":
    alpha, source, target = float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    print(target, interpolate(alpha, source, target))
