"""`minseg score` on real LumenStone polished sections (JPEG photos, PNG code masks with the gap at 9-10)."""

import json

import numpy as np

from minseg.cli import main
from tests.inference.conftest import MEMBERS, write_manifest

LUMENSTONE = {"classes": [{"id": i, "name": name, "codes": [code], "color": [20 * i, 255 - 20 * i, 128]}
                          for i, (name, code) in enumerate([
                              ("background", 0), ("chalcopyrite", 1), ("galena", 2), ("magnetite", 3), ("bornite", 4),
                              ("pyrrhotite", 5), ("pyrite", 6), ("pentlandite", 7), ("sphalerite", 8),
                              ("tennantite", 11)])],
              "ignore_index": 255, "ignore_codes": [], "mask_encoding": "codes"}


def test_score_real_lumenstone_sections(shared_data, ray_session, tmp_path, capsys):
    """An ensemble (untrained tiny members, seeded: the numbers are not the point) with LumenStone's class map at
    1/16 scale, scored on two real sections from both LumenStone subsets, copied to a new folder (a new labelled
    set; links would be refused): every pixel of the rescaled masks is counted once, per-class rows name the real
    minerals."""
    import shutil

    from PIL import Image

    manifest = write_manifest(tmp_path, mode="soft", tile=64, overlap=16, scale=0.0625, members=MEMBERS,
                              classes=LUMENSTONE)
    folder = tmp_path / "sections"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for stem in ("01", "a01"):
        shutil.copy(shared_data / "lumenstone" / "images" / f"{stem}.jpg", folder / "images")
        shutil.copy(shared_data / "lumenstone" / "masks" / f"{stem}.png", folder / "masks")
    out = tmp_path / "score"
    assert main(["score", "--manifest", manifest, "--data", str(folder), "--out", str(out),
                 "--set", "ray.task_cpus=0.25", "--set", "score.cpus_per_actor=0.25"]) == 0
    assert "2 images scored, 0 quarantined" in capsys.readouterr().out
    document = json.loads((out / "score.json").read_text())
    assert document["images"] == 2 and document["tiling"]["scale"] == 0.0625
    ensemble = next(c for c in document["candidates"] if c["key"] == document["selected"])
    assert document["selected"] == "soft-2" and len(ensemble["members"]) == 2
    width, height = Image.open(shared_data / "lumenstone" / "images" / "01.jpg").size
    scaled = round(height * 0.0625) * round(width * 0.0625)
    assert np.asarray(ensemble["metrics"]["confusion"]).sum() == 2 * scaled  # both masks, at the manifest's scale
    truth = np.asarray(ensemble["metrics"]["confusion"]).sum(axis=1)
    names = [c["name"] for c in LUMENSTONE["classes"]]
    # 01 (second subset) holds pyrrhotite / pentlandite / chalcopyrite, a01 (first subset) none of them but pyrite
    assert truth[names.index("pyrrhotite")] > 0 and truth[names.index("background")] > 0
    stats = json.loads((out / "data" / "dataset_stats.json").read_text())["stats"]["test"]
    assert stats["images"] == 2 and stats["classes"]["pyrrhotite"]["pixels"] > 0
    table6 = json.loads((out / "reports.json").read_text())["table6_per_class"]
    assert [row["class"] for row in table6] == names


def test_the_library_refuses_another_commands_output_folder(tmp_path):
    """``score_ensemble`` (not only the CLI, naming --out) refuses an evaluation's folder before it reads anything:
    score's tables would replace the evaluation's, its evaluation.json kept (a folder contradicting itself)."""
    import pytest

    from minseg.config.schema import MinsegConfig
    from minseg.ensemble.config import ScoreSettings
    from minseg.ensemble.score import score_ensemble
    from minseg.errors import InputError

    (tmp_path / "evaluation.json").write_text("{}")
    config = MinsegConfig()
    config.score = ScoreSettings(manifest=str(tmp_path / "no-manifest.json"), output_uri=str(tmp_path))
    with pytest.raises(InputError, match=r"^score.output_uri: .* holds the outputs of minseg evaluate"):
        score_ensemble(config)
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]
