import numpy as np
import pytest
import torch

CLASSES = {
    "classes": [
        {"id": 0, "name": "background", "codes": [0], "color": [0, 0, 0]},
        {"id": 1, "name": "pyrite", "codes": [1], "color": [255, 215, 0]},
        {"id": 2, "name": "chalcopyrite", "codes": [2], "color": [0, 120, 255]},
    ],
    "ignore_index": 255, "ignore_codes": [], "mask_encoding": "codes",
}
MEMBERS = [("halfunet", "half_unet", {"width": 0.125}), ("unet", "unet", {"width": 0.0625})]


def write_manifest(root, mode="wv", tile=64, overlap=16, scale=1.0, members=MEMBERS, classes=CLASSES) -> str:
    """A manifest over untrained tiny members (seeded weights): inference needs no training."""
    from minseg.ensemble.manifest import write_ensemble
    from minseg.models import build_model

    modules = []
    for rank, (name, model_name, options) in enumerate(members):
        torch.manual_seed(rank)
        modules.append((name, model_name, options, build_model(model_name, num_classes=len(classes["classes"]),
                                                                 **options)))
    return write_ensemble(str(root / f"{mode}-{tile}-{scale}"), modules, classes, mode=mode, tile=tile,
                          overlap=overlap, scale=scale, mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0),
                          name=f"test-{mode}")


@pytest.fixture(scope="session")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    return {mode: write_manifest(root, mode) for mode in ("wv", "soft")}


@pytest.fixture(scope="session")
def test_slides(tmp_path_factory):
    """A pyramidal JPEG BigTIFF (synthetic section), a PNG smaller than a tile, a corrupt TIFF, a missing file."""
    from PIL import Image

    from minseg.synth.config import SlideSynth
    from minseg.synth.slide import write_synthetic_slide

    root = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(str(root / "section.tif"), str(root / "section_mask.tif"),
                          SlideSynth(height=200, width=330, tile=128), seed=3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "small.png")
    data = (root / "section.tif").read_bytes()
    (root / "corrupt.tif").write_bytes(data[: len(data) // 3])  # header fine, tiles cut off
    data = (root / "small.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])  # planned from its header; decoding fails
    return {"section": str(root / "section.tif"), "small": str(root / "small.png"),
            "corrupt": str(root / "corrupt.tif"), "missing": str(root / "missing.tif"), "cut": str(root / "cut.png")}
