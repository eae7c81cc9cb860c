"""Write into a checkpoint's header the object labels whose box prompts its own decoder answers (``extra.box_labels``,
read by ``BiasCareModel.answers_boxes_for``); every other label's box goes to the foundation (stock) decoder.

The labels: what the checkpoint's decoder was trained on — the lungs (the chest radiograph lung masks: "lungs",
"left lung", "right lung"; the CT lung lobes add the group "Lung") and the CT structures of the structure dataset's
train split (``split.json``'s ``train_structures``, TotalSegmentator names; several folders' splits as a comma list), each also as its app group
(``training.cache.box_labels``: "vertebrae_L1" → "Vertebra") — what ``launch.py train`` now writes by itself for a
new checkpoint. Tensors are copied unchanged; the header's version becomes VERSION (the findings cards follow it:
their heads are unchanged).

    python training/recipes/box_labels.py CHECKPOINT SPLIT_JSON[,SPLIT_JSON...] VERSION OUT.safetensors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from core_model.findings import carried_over  # noqa: E402
from training.cache import LUNG_LABELS, box_labels  # noqa: E402


def write(checkpoint: Path, splits: list[Path], version: str, out: Path) -> list[str]:
    structures = [name for split in splits for name in json.loads(split.read_text())["train_structures"]]
    labels = box_labels([*LUNG_LABELS.values(), *structures])
    with safe_open(str(checkpoint), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    info = json.loads(metadata["biascare_info"])
    previous, info["version"] = info["version"], version
    extra = info.setdefault("extra", {})
    extra["box_labels"] = labels
    if extra.get("findings"):  # the classifier heads are unchanged
        extra["findings"] = carried_over(extra["findings"], version, previous)
    save_file(tensors, str(out), metadata={**metadata, "biascare_info": json.dumps(info)})
    return labels


if __name__ == "__main__":
    labels = write(Path(sys.argv[1]), [Path(p) for p in sys.argv[2].split(",")], sys.argv[3], Path(sys.argv[4]))
    print(sys.argv[4], len(labels), "labels:", ", ".join(labels))
