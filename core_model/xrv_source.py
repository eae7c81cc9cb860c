"""A torchxrayvision classifier loaded from a local weights file, as a findings source with CXR-LT names.

torchxrayvision (Cohen et al., MIDL 2022; Apache-2.0, https://github.com/mlmed/torchxrayvision) publishes DenseNet-121
(224²) chest X-ray classifiers trained on NIH, CheXpert, MIMIC-CXR, PadChest and others; their weights are downloaded from GitHub releases, which this
project cannot reach, so an admin points to a file already on disk. Accepted files:

* a ``state_dict`` saved with ``torch.save(model.state_dict(), path)`` (``.pt``/``.pth``, read with
  ``weights_only=True``) or a ``.safetensors`` file;
* a whole pickled model — the format of torchxrayvision's own release files — only with ``trust_pickle=True``
  (unpickling runs code from the file, so it must be a file the admin trusts).

``weights_name`` names the torchxrayvision weights the file holds (e.g. ``densenet121-res224-nih``): its output
labels and published operating points come from the package's table (no download). Outputs are the package's
operating-point-normalised scores (``op_norm``: the published operating point maps to 0.5), so the source's supplier
threshold is 0.5 for every class with an operating point. Preprocessing is torchxrayvision's: grayscale scaled to
[−1024, 1024], centre crop to a square, resize to the model resolution.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core_model.findings import FindingsCard, supplier_card
from core_model.preprocess import as_gray_float

# torchxrayvision label → CXR-LT 2024 class name (all 18 of its default pathologies have a CXR-LT counterpart)
XRV_TO_CXRLT: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Consolidation": "Consolidation", "Infiltration": "Infiltration",
    "Pneumothorax": "Pneumothorax", "Edema": "Edema", "Emphysema": "Emphysema", "Fibrosis": "Fibrosis",
    "Effusion": "Pleural Effusion", "Pneumonia": "Pneumonia", "Pleural_Thickening": "Pleural Thickening",
    "Cardiomegaly": "Cardiomegaly", "Nodule": "Nodule", "Mass": "Mass", "Hernia": "Hernia",
    "Lung Lesion": "Lung Lesion", "Fracture": "Fracture", "Lung Opacity": "Lung Opacity",
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
}
DEFAULT_WEIGHTS_NAME = "densenet121-res224-all"


class XrvSourceError(RuntimeError):
    """A torchxrayvision weights file that cannot be used; the message names the file and the cause."""


@dataclass
class XrvSource:
    """A loaded torchxrayvision model: ``predict`` one image → {CXR-LT class: score}; ``card`` its findings card."""

    name: str
    path: Path
    weights_name: str
    network: torch.nn.Module
    labels: tuple[str, ...]          # the network's output labels ('' = an output the weights do not predict)
    resolution: int
    sha256: str

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> dict[str, float]:
        """(H, W) or (H, W, C) display image (uint8 as is; any other dtype min–max scaled to 0–255) → {class: score}."""
        scores = self.network(self.model_input(pixels))[0]
        return {XRV_TO_CXRLT[label]: float(score) for label, score in zip(self.labels, scores.tolist())
                if label in XRV_TO_CXRLT and np.isfinite(score)}

    def model_input(self, pixels: np.ndarray) -> torch.Tensor:
        """The image as torchxrayvision expects it: (1, 1, R, R) in [−1024, 1024], centre-cropped and resized."""
        import torchxrayvision as xrv

        gray = as_gray_float(pixels)
        if np.asarray(pixels).dtype != np.uint8:  # e.g. the app's float [0, 1] display image
            gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-8) * 255.0
        image = xrv.datasets.normalize(gray, 255.0)[None]
        image = xrv.datasets.XRayCenterCrop()(image)
        image = xrv.datasets.XRayResizer(self.resolution, engine="skimage")(image)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]

    def card(self) -> FindingsCard:
        """Supplier card: the classes the weights predict; suggested at the published operating point (score 0.5)."""
        import torchxrayvision as xrv

        classes = [XRV_TO_CXRLT[label] for label in self.labels if label in XRV_TO_CXRLT]
        thresholds = {c: 0.5 for c in classes} if self._has_operating_points() else {}
        origin = (f"torchxrayvision {xrv.__version__} {self.weights_name} weights from the local file "
                  f"{self.path.name} (sha256 {self.sha256[:12]}); scores normalised at the package's published "
                  "operating points; not validated on this site's images")
        return supplier_card(self.name, "torchxrayvision", origin, "cxr-lt-26", classes, thresholds)

    def _has_operating_points(self) -> bool:
        return getattr(self.network, "op_threshs", None) is not None


def load_xrv_source(weights_path: str | Path, name: str | None = None, weights_name: str = DEFAULT_WEIGHTS_NAME,
                    trust_pickle: bool = False) -> XrvSource:
    """Load ``weights_path`` into the torchxrayvision architecture of ``weights_name``; :class:`XrvSourceError` when
    the file is missing, unreadable, or does not fit that architecture."""
    import torchxrayvision as xrv

    path = Path(weights_path)
    spec = xrv.models.model_urls.get(weights_name)
    if spec is None:
        known = sorted(k for k in xrv.models.model_urls if "-" in k)
        raise XrvSourceError(f"{path}: unknown torchxrayvision weights name {weights_name!r}; known: {known}")
    if not path.is_file():
        raise XrvSourceError(f"{path}: weights file not found")
    network = _architecture(weights_name)
    state = _read_state(path, trust_pickle)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0:3]
        raise XrvSourceError(f"{path}: does not hold {weights_name} weights ({' '.join(first)})") from None
    labels = tuple(spec["labels"])
    thresholds = spec.get("op_threshs")
    network.op_threshs = None if thresholds is None else torch.tensor(thresholds, dtype=torch.float32)
    network.apply_sigmoid = True
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return XrvSource(name or f"xrv-{path.stem}-{digest[:8]}", path, weights_name, network.eval(), labels,
                     int(spec.get("input_resolution", 224)), digest)


def _architecture(weights_name: str) -> torch.nn.Module:
    """The untrained DenseNet of ``weights_name`` (``weights=None``: nothing is downloaded), with its output width."""
    import torchxrayvision as xrv

    if not weights_name.startswith("densenet"):
        raise XrvSourceError(f"torchxrayvision weights {weights_name!r}: only the DenseNet-121 weights are supported "
                             "(the package builds its ResNet only by downloading)")
    return xrv.models.DenseNet(weights=None, num_classes=len(xrv.models.model_urls[weights_name]["labels"]))


def _read_state(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises several types for a damaged file
            raise XrvSourceError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # unpickling errors come in many types
        hint = ("" if trust_pickle else " — a whole pickled model (torchxrayvision's release format) needs "
                "trust_pickle, for a file you trust")
        raise XrvSourceError(f"{path}: not a readable weights file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200]}){hint}") from None
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise XrvSourceError(f"{path}: holds {type(loaded).__name__}, not a state dict of tensors")
    return {k: v for k, v in loaded.items() if k != "op_threshs"}


__all__ = ["XrvSource", "XrvSourceError", "load_xrv_source", "XRV_TO_CXRLT", "DEFAULT_WEIGHTS_NAME"]
