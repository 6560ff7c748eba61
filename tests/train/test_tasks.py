"""The same machinery trains a classifier and a k-fold binary segmentation task."""

import json

import numpy as np
import pytest

from minseg.config import MinsegConfig, validate_config
from minseg.synth.sections import render_section
from minseg.train.ensemble import train_ensemble
from tests.data.helpers import jpg_bytes, png_bytes, write_class_folders


def test_classifier_on_class_folders(ray_session, tmp_path):
    config = validate_config({
        "run": {"name": "cls", "output_uri": str(tmp_path / "runs")},
        "ray": {"task_cpus": 0.25},
        "data": {"sources": [{"uri": str(write_class_folders(tmp_path / "cls"))}], "tiling": {"size": 32},
                 "cache": "auto", "augmentation": {"mode": "dihedral"},
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "training": {"members": [{
            "name": "convnext", "model": "convnext_eca", "model_options": {"width": 0.125, "depth": "tiny"},
            "stages": [{"epochs": 2, "batch_size": 4}], "optimizer": {"lr": 0.002},
            "scaling": {"cpus_per_worker": 0.25}, "checkpoint_metric": "accuracy", "max_failures": 0}]},
    }, MinsegConfig)
    (row,) = train_ensemble(config)
    assert row.status == "done", row.error
    assert row.metric == "accuracy" and 0.0 <= row.best_value <= 1.0
    metrics = json.loads(open(f"{row.best_checkpoint}/metrics.json").read())
    assert metrics["classes"] == ["bright", "dark"] and "mean_precision" in metrics and "f1" in metrics
    # ensemble evaluation covers segmentation: training scores a classifier's best checkpoint on the test split
    # (which chose nothing), as the members table's test column and the state's test_metrics
    from minseg.io.storage import Storage
    from minseg.train.checkpoint import load_checkpoint

    tested = load_checkpoint(Storage(), str(tmp_path / "runs" / "cls"), "convnext").state["test_metrics"]
    assert sum(tested["support"]) == 3 and row.test_value == tested["accuracy"]
    table = json.loads((tmp_path / "runs" / "cls" / "members.json").read_text())["members"]
    assert table[0]["test_value"] == row.test_value
    from minseg.ensemble.evaluate import discover_members
    from minseg.errors import InputError

    with pytest.raises(InputError, match="training scores each classifier's best checkpoint on the test split"):
        discover_members(Storage(), str(tmp_path / "runs" / "cls"), None)


def test_binary_kfold_with_weighted_bce(ray_session, tmp_path):
    root = tmp_path / "plastic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image, mask = render_section(i, 48, 48)
        binary = (mask == 1).astype(np.uint8)  # pyrite grains as the single foreground class
        (root / "images" / f"p{i}.jpg").write_bytes(jpg_bytes(image))
        (root / "masks" / f"p{i}.png").write_bytes(png_bytes(binary))
    config = validate_config({
        "run": {"name": "cv", "output_uri": str(tmp_path / "runs")},
        "ray": {"task_cpus": 0.25},
        "data": {"sources": [{"uri": str(root)}], "tiling": {"size": 48}, "cache": True,
                 "classes": {"classes": [{"name": "background", "codes": [0]}, {"name": "microplastic", "codes": [1]}]},
                 "augmentation": {"mode": "shift_rotate"},
                 "split": {"train": 0.84, "val": 0.0, "test": 0.16, "folds": 2}},
        "training": {"members": [{
            "name": "halfunet", "model": "half_unet", "model_options": {"width": 0.125}, "loss": {"name": "weighted_bce"},
            "stages": [{"epochs": 2, "batch_size": 2}], "optimizer": {"lr": 0.003}, "scaling": {"cpus_per_worker": 0.25},
            "checkpoint_metric": "recall_weighted_f1", "max_failures": 0,
            # its own augmentation, with photometric jitter: the loop hands it the normalisation statistics
            "augmentation": {"mode": "shift_rotate", "exposure": 0.2, "colour": 0.05}}]},
    }, MinsegConfig)
    rows = train_ensemble(config)
    assert [(r.member, r.fold, r.status) for r in rows] == [("halfunet", 0, "done"), ("halfunet", 1, "done")]
    document = json.loads((tmp_path / "runs" / "cv" / "members.json").read_text())
    summary = document["cross_validation"]["halfunet"]
    assert summary["folds"] == 2 and summary["metric"] == "recall_weighted_f1"
    # reported: each fold's test part, scored with the checkpoint its validation part chose
    assert all(r.test_value is not None and 0.0 <= r.test_value <= 1.0 for r in rows)
    assert summary["mean"] == pytest.approx(np.mean([r.test_value for r in rows]))
    assert summary["sd"] == pytest.approx(np.std([r.test_value for r in rows], ddof=1))
    splits = json.loads((tmp_path / "runs" / "cv" / "data" / "splits.json").read_text())
    folds = [{part: set(ids) for part, ids in f.items()} for f in splits["folds"]]
    pool = {s.split("/")[-1] for s in splits["train"] + splits["val"]}
    for fold in folds:  # per fold: never test on what trained or chose the checkpoint
        assert fold["val"] and fold["train"] and not fold["test"] & (fold["val"] | fold["train"])
        assert not fold["val"] & fold["train"]
        assert {s.split("/")[-1] for s in fold["test"] | fold["val"] | fold["train"]} == pool
    assert not folds[0]["test"] & folds[1]["test"]
    assert not (folds[0]["test"] | folds[1]["test"]) & {s for s in splits["test"]}
    state = json.loads(open(f"{rows[0].last_checkpoint}/state.json").read())
    assert state["test_metrics"]["recall_weighted_f1"] == pytest.approx(rows[0].test_value)
    # ensemble evaluation of a k-fold run says what it is and where its scores are (was "no finished members")
    from minseg.ensemble.evaluate import discover_members
    from minseg.errors import InputError
    from minseg.io.storage import Storage

    with pytest.raises(InputError, match=r"is a 2-fold cross-validation run: .* members.json cross_validation"):
        discover_members(Storage(), str(tmp_path / "runs" / "cv"), None)
