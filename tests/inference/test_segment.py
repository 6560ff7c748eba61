"""The segmentation job on real Ray: outputs, failures, re-runs, actor loss, S3, real slides."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

from minseg.config.schema import MinsegConfig
from minseg.inference.config import SegmentSettings
from minseg.inference.segment import segment_slides
from minseg.io.tiff import read_metadata
from tests.support.processes import kill_processes_titled


def run(manifest, slides, out, **settings):
    config = MinsegConfig()
    config.ray = config.ray.model_copy(update={"task_cpus": 0.25})
    values = {"manifest_uri": manifest, "slides": slides, "output_uri": str(out), "cpus_per_actor": 0.5,
              "tiles_per_read": 4, "batch_size": 4, "preview_max_side": 128, "output_tile": 64}
    values.update(settings)
    config.segment = SegmentSettings(**values)
    return segment_slides(config)


def decoded(path):
    with tifffile.TiffFile(path) as tiff:
        return [page.asarray() for page in [tiff.pages[0], *(tiff.pages[0].pages or [])]]


def test_slides_are_segmented_and_bad_ones_reported(ray_session, manifests, test_slides, tmp_path):
    slides = [test_slides[k] for k in ("section", "corrupt", "small", "missing")]
    summary = run(manifests["soft"], slides, tmp_path)
    assert sorted(d["slide"] for d in summary.done) == ["section", "small"], summary.failed
    failures = {f.slide: f.reason for f in summary.failed}
    assert set(failures) == {"corrupt", "missing"}
    assert "corrupt.tif" in failures["corrupt"] and "missing.tif" in failures["missing"]
    assert json.loads((tmp_path / "failures.json").read_text()) == [f.to_document() for f in summary.failed]
    assert not (tmp_path / "corrupt").exists() and not (tmp_path / "missing").exists(), "no partial outputs"
    assert not list(tmp_path.glob(".staging*")) and not list(tmp_path.rglob("*.partial"))

    section = tmp_path / "section"
    assert sorted(p.name for p in section.iterdir()) == ["labels.tif", "preview.png", "summary.json",
                                                         "uncertainty.tif"]
    levels = decoded(section / "labels.tif")
    assert levels[0].shape == (200, 330) and levels[0].dtype == np.uint8 and levels[0].max() <= 2
    assert len(levels) > 1 and levels[1].shape == (100, 165)  # pyramidal
    meta = read_metadata(str(section / "labels.tif"))
    assert [c["name"] for c in meta["classes"]] == ["background", "pyrite", "chalcopyrite"]
    assert meta["ensemble_digest"] == summary.ensemble_digest and meta["fusion"] == "soft"
    with tifffile.TiffFile(section / "labels.tif") as tiff:
        assert tiff.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE and tiff.pages[0].is_tiled
    uncertainty = decoded(section / "uncertainty.tif")[0]
    assert uncertainty.shape == (200, 330) and uncertainty.max() > 0

    slide_summary = json.loads((section / "summary.json").read_text())
    areas = slide_summary["modal_mineralogy"]
    assert sum(a["pixels"] for a in areas.values()) == 200 * 330
    assert abs(sum(a["area_percent"] for a in areas.values()) - 100) < 1e-6
    counts = np.bincount(levels[0].ravel(), minlength=3)
    assert [areas[n]["pixels"] for n in ("background", "pyrite", "chalcopyrite")] == counts.tolist()
    assert slide_summary["tiles"] == 4 * 7 and slide_summary["uncertainty"] == "entropy"
    assert all("count" in g for g in slide_summary["grains"].values())

    from PIL import Image

    preview = Image.open(section / "preview.png")
    assert preview.size[0] > 110 and preview.size[1] >= 67  # overlay (200x330 / 3) + legend on the right
    small = decoded(tmp_path / "small" / "labels.tif")[0]
    assert small.shape == (40, 50)  # smaller than a tile: padded for the models, cropped back

    table = (tmp_path / "slides.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("slide,uri,status")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "slides.parquet").num_rows == 2


def test_labels_match_an_in_process_whole_image_prediction(ray_session, manifests, test_slides, tmp_path):
    """The distributed pipeline computes what predict_image + fuse compute on the whole image."""
    import torch

    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import load_member_models
    from minseg.ensemble.voting import fuse
    from minseg.ensemble.sliding import predict_image
    from minseg.io.slides import Slide
    from minseg.io.storage import Storage

    run(manifests["soft"], [test_slides["section"]], tmp_path)
    manifest = load_manifest(manifests["soft"])
    models = load_member_models(manifest, Storage())
    with Slide(test_slides["section"]) as slide:
        image = slide.read_region(0, 0, 200, 330)
    probs = predict_image(models, image, 3, 64, 16, manifest.normalization["mean"], manifest.normalization["std"])
    expected, fused = fuse(torch.from_numpy(probs), "soft")
    got = decoded(tmp_path / "section" / "labels.tif")[0]
    top2 = torch.topk(fused, 2, dim=0).values
    near_tie = (top2[0] - top2[1]).numpy() < 2e-3  # actors send fp16
    mismatch = got != expected.numpy()
    assert not (mismatch & ~near_tie).any(), int((mismatch & ~near_tie).sum())


def test_rerun_skips_finished_slides_and_force_redoes_them(ray_session, manifests, test_slides, tmp_path):
    first = run(manifests["wv"], [test_slides["small"]], tmp_path)
    assert len(first.done) == 1
    stamp = (tmp_path / "small" / "summary.json").stat().st_mtime_ns
    again = run(manifests["wv"], [test_slides["small"]], tmp_path)
    assert again.done == [] and [s.slide for s in again.skipped] == ["small"]
    assert (tmp_path / "small" / "summary.json").stat().st_mtime_ns == stamp
    assert "skipped" in (tmp_path / "slides.csv").read_text()
    other = run(manifests["soft"], [test_slides["small"]], tmp_path)  # another ensemble: redone
    assert len(other.done) == 1
    forced = run(manifests["soft"], [test_slides["small"]], tmp_path, force=True)
    assert len(forced.done) == 1
    assert not list(tmp_path.glob("small.old-*"))
    # another run into the same output: the batch tables describe every slide there, not just its own
    missing = str(tmp_path / "nowhere.tif")
    later = run(manifests["soft"], [test_slides["section"], missing], tmp_path)
    assert [s["slide"] for s in later.done] == ["section"] and [f.slide for f in later.failed] == ["nowhere"]
    rows = {line.split(",")[0]: line for line in (tmp_path / "slides.csv").read_text().splitlines()[1:]}
    assert set(rows) == {"small", "section"} and ",done," in rows["small"] and ",done," in rows["section"]
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert [s["slide"] for s in summary["slides"]] == ["section", "small"] and summary["wall_seconds"] > 0
    assert [f["slide"] for f in json.loads((tmp_path / "failures.json").read_text())] == ["nowhere"]
    again = run(manifests["soft"], [test_slides["small"]], tmp_path, force=True)  # rows replaced, others kept
    assert len(again.done) == 1 and len((tmp_path / "slides.csv").read_text().splitlines()) == 3
    assert [f["slide"] for f in json.loads((tmp_path / "failures.json").read_text())] == ["nowhere"]


def test_outputs_are_identical_with_two_actors_and_one_killed_mid_run(ray_session, manifests, test_slides, tmp_path):
    reference = run(manifests["wv"], [test_slides["section"]], tmp_path / "one")
    assert len(reference.done) == 1
    killed: list[int] = []

    def assassin():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            time.sleep(0.5)
            killed.extend(kill_processes_titled("ray::MapWorker(MapBatches(EnsemblePredictor", limit=1))

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    summary = run(manifests["wv"], [test_slides["section"]], tmp_path / "two", actors=2, tiles_per_read=1,
                  batch_size=1)
    thread.join()
    assert killed, "no inference actor was found to kill"
    assert len(summary.done) == 1 and not summary.failed
    for name in ("labels.tif", "uncertainty.tif"):
        one, two = decoded(tmp_path / "one" / "section" / name), decoded(tmp_path / "two" / "section" / name)
        assert all(np.array_equal(a, b) for a, b in zip(one, two)), name
    assert (tmp_path / "one/section/labels.tif").read_bytes() == (tmp_path / "two/section/labels.tif").read_bytes()


def test_slides_from_and_outputs_to_s3(ray_session, manifests, test_slides, s3):
    storage = s3.storage()
    storage.upload_file(test_slides["section"], s3.uri("in/a/section.tif"))
    storage.upload_file(test_slides["small"], s3.uri("in/b/small.png"))
    config = MinsegConfig()
    config.storage = s3.settings(forward_credentials=True)  # the Ray workers started before these credentials
    config.segment = SegmentSettings(manifest_uri=manifests["wv"], slides=[s3.uri("in/*/*")],
                                     output_uri=s3.uri("out/run1"), cpus_per_actor=0.5, tiles_per_read=4,
                                     preview_max_side=128, output_tile=64)
    summary = segment_slides(config)
    assert sorted(d["slide"] for d in summary.done) == ["section", "small"], summary.failed
    keys = sorted(info.uri for info in storage.list(s3.uri("out/run1/")))
    for slide in ("section", "small"):
        for name in ("labels.tif", "uncertainty.tif", "preview.png", "summary.json"):
            assert s3.uri(f"out/run1/{slide}/{name}") in keys
    assert s3.uri("out/run1/slides.parquet") in keys and s3.uri("out/run1/run_summary.json") in keys
    import io

    labels = tifffile.imread(io.BytesIO(storage.read_bytes(s3.uri("out/run1/section/labels.tif"))))
    assert labels.shape == (200, 330)
    again = segment_slides(config)
    assert [s.slide for s in again.skipped] == ["section", "small"]


def test_real_slides_every_format_read_tile_by_tile(ray_session, shared_data, tmp_path):
    """BigTIFF ZSTD (pyramid), striped grey TIFF, NDPI and SVS, at 1/8 scale: coarser levels are read where
    the pyramid has them, others are read tile by tile and reduced."""
    from tests.inference.conftest import write_manifest

    manifest = write_manifest(tmp_path / "m", "wv", scale=0.125)
    slides = sorted(str(p) for p in (shared_data / "slides").iterdir())
    summary = run(manifest, slides, tmp_path / "out", preview_max_side=256, tiles_per_read=8, batch_size=8)
    assert not summary.failed, summary.failed
    done = {d["slide"]: json.loads((tmp_path / "out" / d["slide"] / "summary.json").read_text())
            for d in summary.done}
    assert set(done) == {"yb10kx5k.zstd", "grey10kx5k", "test3-DAPI-2-387", "CMU-1-Small-Region"}
    assert done["yb10kx5k.zstd"]["shape"] == [625, 1250] and done["yb10kx5k.zstd"]["read_level"] == 3
    assert done["grey10kx5k"]["read_level"] == 0 and done["grey10kx5k"]["format"] == "tiff"
    assert done["test3-DAPI-2-387"]["format"] == "ndpi" and done["test3-DAPI-2-387"]["read_level"] == 3
    assert done["CMU-1-Small-Region"]["format"] == "svs"
    assert abs(done["CMU-1-Small-Region"]["pixel_size_um"] - 0.499 * 8) < 1e-6  # MPP x 8 at 1/8 scale
    for slide, document in done.items():
        labels = decoded(Path(tmp_path / "out" / slide / "labels.tif"))[0]
        assert list(labels.shape) == document["shape"]


def test_cli_exit_codes(ray_session, manifests, test_slides, tmp_path, capsys):
    from minseg.cli import main

    common = ["--manifest", manifests["wv"], "--set", "segment.output_tile=64", "--set", "segment.cpus_per_actor=0.5"]
    assert main(["segment", test_slides["small"], "--out", str(tmp_path / "a"), *common]) == 0
    assert "segmented 1, skipped 0, failed 0" in capsys.readouterr().out
    assert main(["segment", test_slides["small"], test_slides["missing"], "--out", str(tmp_path / "b"), *common]) == 1
    captured = capsys.readouterr()
    assert "failed: missing" in captured.err and "failures.json" in captured.err
    assert main(["segment", test_slides["small"], "--out", str(tmp_path / "c"), "--manifest",
                 str(tmp_path / "nope.json")]) == 2
    assert "no such ensemble manifest" in capsys.readouterr().err


def test_a_slide_over_the_configured_limits_is_a_failure_entry(manifests, test_slides, tmp_path):
    """Refused from its header while planning (before any Ray work), named in failures.json with the limit."""
    summary = run(manifests["soft"], [test_slides["section"]], tmp_path, limits={"max_pixels": 1000})
    (failure,) = summary.failed
    assert "exceeds segment.limits.max_pixels (1,000)" in failure.reason and not summary.done
    assert json.loads((tmp_path / "failures.json").read_text()) == [failure.to_document()]
