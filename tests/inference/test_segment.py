"""The segmentation job on real Ray: outputs, failures, re-runs, actor loss, S3, real slides."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from minseg.config.schema import MinsegConfig
from minseg.errors import InputError
from minseg.inference.config import SegmentSettings
from minseg.inference.segment import segment_slides
from minseg.io.storage import refuse_other_command_outputs
from minseg.io.tiff import read_metadata
from tests.support.documents import every_record_is_strict_json
from tests.support.processes import kill_processes_titled


def run(manifest, slides, out, **settings):
    config = MinsegConfig()
    config.ray = config.ray.model_copy(update={"task_cpus": 0.25})
    values = {"manifest_uri": manifest, "slides": slides, "output_uri": str(out), "cpus_per_actor": 0.5,
              "batch_size": 4, "preview_max_side": 128, "output_tile": 64, "block": 128}
    values.update(settings)
    config.segment = SegmentSettings(**values)
    return segment_slides(config)


def decoded(path):
    with tifffile.TiffFile(path) as tiff:
        return [page.asarray() for page in [tiff.pages[0], *(tiff.pages[0].pages or [])]]


def zarr_levels(folder, group="labels/classes"):
    """Every level of one multiscale image of a slide's OME-Zarr, read with zarr itself."""
    import zarr

    root = zarr.open_group(str(Path(folder) / "segmentation.ome.zarr"), mode="r")
    image = root[group] if group else root
    datasets = image.attrs["ome"]["multiscales"][0]["datasets"]
    return [np.asarray(image[d["path"]][...]) for d in datasets]


def single_pass(manifest_uri, slide_path, batch_size=4):
    """Labels and uncertainty from one in-process pass over the whole slide: every window in tile order,
    one whole-image Stitcher (what the driver computed before the block pipeline)."""
    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import EnsembleRuntime, Fusion
    from minseg.ensemble.voting import blend_dtype
    from minseg.data.tiling import mean_fill
    from minseg.inference.plan import plan_slide, read_tile
    from minseg.inference.stitch import Stitcher
    from minseg.io.slides import Slide
    from minseg.io.storage import Storage

    manifest = load_manifest(manifest_uri)
    plan = plan_slide(slide_path, "s", manifest, SegmentSettings(), Storage(), "/tmp/unused")
    runtime = EnsembleRuntime.from_manifest(manifest, Storage())
    fusion = Fusion.of(manifest.fusion)
    labels = np.zeros((plan.height, plan.width), np.uint8)
    uncertainty = np.zeros_like(labels)

    def on_tile(top, left, tile_labels, tile_uncertainty):
        labels[top : top + tile_labels.shape[0], left : left + tile_labels.shape[1]] = tile_labels
        uncertainty[top : top + tile_labels.shape[0], left : left + tile_labels.shape[1]] = tile_uncertainty

    stitcher = Stitcher(plan.grid, manifest.num_classes, plan.uncertainty, 64, on_tile)
    fill = mean_fill(manifest.normalization["mean"])
    tiles = [(r, c) for r in range(plan.grid.rows) for c in range(plan.grid.cols)]
    with Slide(slide_path) as slide:
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            batch = np.zeros((batch_size, plan.tile, plan.tile, 3), np.uint8)
            for i, (r, c) in enumerate(chunk):
                batch[i] = read_tile(slide, plan, plan.grid.ys[r], plan.grid.xs[c], fill)
            fused = runtime.predict_images(batch).fused_scores(fusion)[: len(chunk)].float().numpy()
            fused = fused.astype(blend_dtype(fusion.mode))  # as the actors keep them (votes: float32)
            for (r, c), scores in zip(chunk, fused):
                stitcher.add(r, c, scores)
    assert stitcher.complete
    return labels, uncertainty


def test_slides_are_segmented_and_bad_ones_reported(ray_session, manifests, test_slides, tmp_path):
    slides = [test_slides[k] for k in ("section", "corrupt", "small", "missing", "cut")]
    summary = run(manifests["soft"], slides, tmp_path, formats=["zarr", "tiff"])
    assert sorted(d["slide"] for d in summary.done) == ["section", "small"], summary.failed
    failures = {f.slide: f.reason for f in summary.failed}
    assert set(failures) == {"corrupt", "missing", "cut"}
    assert "corrupt.tif" in failures["corrupt"] and "missing.tif" in failures["missing"]
    assert "cut.png: unreadable image" in failures["cut"]
    assert json.loads((tmp_path / "failures.json").read_text()) == [f.to_document() for f in summary.failed]
    for name in ("corrupt", "missing", "cut"):
        assert not (tmp_path / name).exists(), f"no partial outputs of {name}"
    assert not list(tmp_path.rglob(".minseg")), "block records are removed once a slide is done"

    section = tmp_path / "section"
    listed = set(json.loads((section / "summary.json").read_text())["files"].values())
    assert sorted(p.name for p in section.iterdir()) == sorted(listed)  # every file listed, nothing else
    assert {"labels.tif", "preview.png", "segmentation.ome.zarr", "summary.json", "uncertainty.tif",
            "mineralogy.json", "grains.parquet", "particles.parquet"} <= listed
    levels = zarr_levels(section)
    assert levels[0].shape == (200, 330) and levels[0].dtype == np.uint8 and levels[0].max() <= 2
    assert [level.shape for level in levels] == [(200, 330), (100, 165), (50, 83), (25, 42)]
    from minseg.io.tiff import halve

    for upper, lower in zip(levels, levels[1:]):  # coarse levels are the level above halved, across blocks
        assert np.array_equal(lower, halve(upper, "nearest"))
    image = zarr_levels(section, "")
    assert image[0].shape == (3, 200, 330) and image[0].max() > 0
    for upper, lower in zip(image, image[1:]):
        assert np.array_equal(lower, np.moveaxis(halve(np.moveaxis(upper, 0, -1), "mean"), -1, 0))
    tiff_levels = decoded(section / "labels.tif")
    assert np.array_equal(tiff_levels[0], levels[0]) and tiff_levels[1].shape == (100, 165)
    meta = read_metadata(str(section / "labels.tif"))
    assert [c["name"] for c in meta["classes"]] == ["background", "pyrite", "chalcopyrite"]
    assert meta["ensemble_digest"] == summary.ensemble_digest and meta["fusion"] == "soft"
    with tifffile.TiffFile(section / "labels.tif") as tiff:
        assert tiff.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE and tiff.pages[0].is_tiled
        # deflate, which every TIFF reader decodes (the zarr keeps zstd: segment.tiff_compression)
        assert tiff.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    uncertainty = zarr_levels(section, "uncertainty")[0]
    assert uncertainty.shape == (200, 330) and uncertainty.max() > 0
    assert np.array_equal(decoded(section / "uncertainty.tif")[0], uncertainty)
    facts = read_metadata(str(section / "uncertainty.tif"))  # the run facts whole (its value key once hid "scale")
    assert facts["scale"] == meta["scale"] and facts["values"] == "0..255 = none..maximal"

    import zarr

    root = zarr.open_group(str(section / "segmentation.ome.zarr"), mode="r")
    assert root.attrs["ome"]["version"] == "0.5" and root.attrs["minseg"]["status"] == "complete"
    assert root.attrs["minseg"]["ensemble_digest"] == summary.ensemble_digest
    assert root["labels"].attrs["ome"]["labels"] == ["classes"]
    label_meta = root["labels/classes"].attrs["ome"]["image-label"]
    assert [p["class"] for p in label_meta["properties"]] == ["background", "pyrite", "chalcopyrite"]
    assert label_meta["colors"][1] == {"label-value": 1, "rgba": [255, 215, 0, 255]}
    assert [d["coordinateTransformations"][0]["scale"] for d in
            root["labels/classes"].attrs["ome"]["multiscales"][0]["datasets"]][:2] == [[1.0, 1.0], [2.0, 2.0]]

    slide_summary = json.loads((section / "summary.json").read_text())
    areas = slide_summary["modal_mineralogy"]
    assert sum(a["pixels"] for a in areas.values()) == 200 * 330
    assert abs(sum(a["area_percent"] for a in areas.values()) - 100) < 1e-6
    # weight % over the sample (background left out), by the built-in densities of pyrite and chalcopyrite;
    # none when the (untrained) ensemble finds no sample at all
    mass = {name: areas[name]["pixels"] * density for name, density in (("pyrite", 5.01), ("chalcopyrite", 4.19))}
    for name in mass:
        expected_wt = 100 * mass[name] / sum(mass.values()) if sum(mass.values()) else None
        assert areas[name]["weight_percent"] == (pytest.approx(expected_wt, abs=1e-3) if expected_wt is not None
                                                 else None)
    assert "weight_percent" not in areas["background"] and slide_summary["densities_missing"] == []
    # association from the blocks (6 of them) as counted over the whole label map (tests/mineralogy: blocks of
    # any size and order against a pixel-by-pixel count, on label maps with many classes)
    from minseg.mineralogy import association_table, boundary_counts

    names = ["background", "pyrite", "chalcopyrite"]
    expected = association_table(boundary_counts(levels[0], 3), names, {"background"}, None)
    assert slide_summary["association"] == json.loads(json.dumps(expected))
    assert set(slide_summary["association"]) == {"pyrite", "chalcopyrite"}
    # particles: connected sample pixels (tests/mineralogy: blocks against ndimage.label of the whole map)
    sample_pixels = int((levels[0] != 0).sum())
    assert slide_summary["particles"]["sample_pixels"] == sample_pixels
    assert set(slide_summary["liberation"]) == {"pyrite", "chalcopyrite"}
    for name, klass in (("pyrite", 1), ("chalcopyrite", 2)):
        assert slide_summary["liberation"][name]["pixels"] == int((levels[0] == klass).sum())
    from scipy import ndimage

    from minseg.mineralogy.sizes import size_distribution

    ids, _ = ndimage.label(levels[0] != 0, structure=np.ones((3, 3)))
    particle_areas, how_many = np.unique(np.bincount(ids.ravel())[1:], return_counts=True)
    real = particle_areas >= 4  # segment.min_grain_px: smaller particles are noise
    expected_sizes = size_distribution(particle_areas[real], how_many[real], None)
    del expected_sizes["mass"]  # by the particles' compositions: tests/mineralogy/test_slide.py
    assert {k: v for k, v in slide_summary["particles"]["size"].items() if k != "mass"} == \
        json.loads(json.dumps(expected_sizes))
    assert slide_summary["particles"]["count"] == how_many[real].sum()
    assert slide_summary["particles"]["noise"] == how_many[~real].sum()
    assert set(slide_summary["grains"]["pyrite"]["size"]) == {"count", "unit", "number", "area", "mass"}
    # the per-object tables, mineralogy.json and the figures (tests/mineralogy/test_slide.py checks their values)
    import pyarrow.parquet as pq

    assert pq.read_table(section / "particles.parquet").num_rows == how_many[real].sum()
    document = json.loads((section / "mineralogy.json").read_text())
    assert document["particles"] == slide_summary["particles"] and set(document["liberation_by_size"]) == \
        {"-20 px", "+20-38 px", "+38-75 px", "+75-150 px", "+150-300 px", "+300 px"}
    for name in ("mineralogy.json", "grains.parquet", "particles.parquet"):
        assert name in slide_summary["files"].values(), name
    # figures only when there is something to draw (this untrained ensemble may find no mineral at all)
    assert ("size_distribution.png" in slide_summary["files"].values()) == bool(sample_pixels)
    assert all((section / name).exists() for name in slide_summary["files"].values())
    counts = np.bincount(levels[0].ravel(), minlength=3)
    assert [areas[n]["pixels"] for n in ("background", "pyrite", "chalcopyrite")] == counts.tolist()
    assert slide_summary["tiles"] == 4 * 7 and slide_summary["uncertainty"] == "entropy"
    assert slide_summary["blocks"] == 2 * 3 and slide_summary["recompute"] > 1.0  # halos were predicted twice
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 2)
    for klass, name in enumerate(("background", "pyrite", "chalcopyrite")):  # grains merged across blocks
        components, count = ndimage.label(levels[0] == klass, structure=structure)
        sizes = np.bincount(components.ravel())[1:]
        grains = slide_summary["grains"][name]
        assert grains["count"] + grains["noise_components"] == count, name
        assert grains["count"] == int((sizes >= 4).sum()), name
        assert (pq.read_table(section / "grains.parquet").column("class").to_pylist().count(name)
                == grains["count"]), name

    from PIL import Image

    preview = Image.open(section / "preview.png")
    assert preview.size[0] > 110 and preview.size[1] >= 67  # overlay (200x330 / 3) + legend on the right
    small = zarr_levels(tmp_path / "small")[0]
    assert small.shape == (40, 50)  # smaller than a tile: padded for the models, cropped back

    table = (tmp_path / "slides.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("slide,uri,status")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "slides.parquet")
    assert table.num_rows == 2 and {"particles", "particle_p80_px", "liberated_pct:pyrite"} <= set(table.column_names)
    document = json.loads((tmp_path / "run_summary.json").read_text())
    assert every_record_is_strict_json(tmp_path) > 6  # summaries, failures, mineralogy, zarr metadata
    assert document["blocks"] == 6 + 6 + 1 + 1 and document["windows"] > 4 * 7 + 1  # bad slides tried too
    # the driver got a few numbers per block, not the scores the windows made
    assert document["driver_bytes"] < 0.01 * document["score_bytes"]
    assert 0 < document["startup_seconds"] < document["wall_seconds"]
    assert list(document["blocks_per_node"].values()) == [document["blocks"]]  # one local node did them all


def test_twelve_bit_slides_are_read_as_the_ensemble_read_its_images(ray_session, manifests, tmp_path, caplog):
    """An ensemble trained with data.bit_depth 12 (its manifest's bit_depth) reads a 12-bit camera's 16-bit TIFF as
    the same picture in 8 bits: the same labels; a sample above 4095 fails that slide naming the value; and
    segment.bit_depth overrides it (slides of another camera), redoing a slide read the other way; read as 16-bit,
    the slide is nearly black, which is said (segment.slide_dark) and kept in its summary and slides.csv."""
    import logging

    from PIL import Image

    document = json.loads(Path(manifests["soft"]).read_text())
    twelve = tmp_path / "manifest-12.json"
    twelve.write_text(json.dumps({**document, "bit_depth": 12}))
    rng = np.random.default_rng(5)
    eight = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    eight[:, :35] //= 4  # dark and bright halves: a reading off by a scale would change the labels
    Image.fromarray(eight).save(tmp_path / "eight.png")
    frame = (eight.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 0..4095, back to ``eight`` at 12 bits
    tifffile.imwrite(tmp_path / "camera.tif", frame, photometric="rgb")
    frame[20, 30, 1] = 4096
    tifffile.imwrite(tmp_path / "bright.tif", frame, photometric="rgb")
    slides = [str(tmp_path / name) for name in ("eight.png", "camera.tif", "bright.tif")]
    out = tmp_path / "out"
    summary = run(str(twelve), slides, out)
    assert sorted(d["slide"] for d in summary.done) == ["camera", "eight"]
    (failure,) = summary.failed
    assert failure.slide == "bright" and "bright.tif: a sample of 4096 (at x=30, y=20) is above 4095" in failure.reason
    assert np.array_equal(zarr_levels(out / "camera")[0], zarr_levels(out / "eight")[0])
    first = json.loads((out / "camera" / "summary.json").read_text())
    assert first["bit_depth"] == 12 and first["stored_bits"] == 16 and first["brightest"] == eight.max()
    # an 8-bit slide reads alike at any bit depth: recorded at the default, not redone when it changes
    plain = json.loads((out / "eight" / "summary.json").read_text())
    assert plain["bit_depth"] == 16 and plain["stored_bits"] == 8
    assert "segment.slide_dark" not in {r.getMessage() for r in caplog.records}
    with caplog.at_level(logging.WARNING, logger="minseg.segment"):
        again = run(str(twelve), slides[:2], out, bit_depth=16)  # read as 16-bit now: not the finished outputs
    assert [d["slide"] for d in again.done] == ["camera"] and [s.slide for s in again.skipped] == ["eight"]
    second = json.loads((out / "camera" / "summary.json").read_text())
    assert second["bit_depth"] == 16 and second["brightest"] <= 16  # 0..4095 of 65535
    (dark,) = [r.fields for r in caplog.records if r.getMessage() == "segment.slide_dark"]
    assert dark["slide"] == "camera" and dark["brightest"] == second["brightest"] and "segment.bit_depth" in \
        dark["hint"]
    rows = {line.split(",")[0]: line for line in (out / "slides.csv").read_text().splitlines()}
    assert "brightest" in rows["slide"] and rows["eight"] and rows["camera"]


def test_block_records_of_an_older_run_leave_the_brightest_value_unknown():
    """Records written before blocks kept their brightest value (an interrupted run resumed after an upgrade)
    read as unknown: the slide's summary says null, and no darkness is claimed."""
    from minseg.inference.blocks import UNKNOWN, Block, BlockRecord, pack, unpack
    from minseg.inference.segment import warn_if_dark
    from minseg.mineralogy.config import MineralogySettings
    from minseg.mineralogy.slide import MeasureSpec, measure_block

    labels = np.zeros((8, 8), np.uint8)
    record = BlockRecord(Block(0, 0, 0, 8, 0, 8), measure_block(labels, 0, 0, MeasureSpec(("a", "b"),
                         MineralogySettings(), None)), 0, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8),
                         1, 0.1, brightest=(12, 200))
    assert BlockRecord.from_bytes(record.to_bytes()).brightest == (12, 200)  # each image of a scene
    arrays = unpack(record.to_bytes())
    arrays["brightest"] = np.asarray(200, np.int16)  # a record before images were told apart: one value
    assert BlockRecord.from_bytes(pack(**arrays)).brightest == (200,)
    del arrays["brightest"]
    assert BlockRecord.from_bytes(pack(**arrays)).brightest == UNKNOWN
    warn_if_dark({"slide": "s", "brightest": None})  # nothing to say, nothing raised


def test_a_slides_brightest_values_gather_over_its_blocks_image_by_image():
    """Each image of a scene is judged over every block (a PPL bright only in one block, a BSE only in another: both
    bright); a record of a run before images were told apart leaves them unknown but not the slide's value; one
    before values were kept leaves both unknown."""
    from minseg.inference.blocks import UNKNOWN
    from minseg.inference.finish import Brightest

    scene = Brightest(2)
    for values in ((200, 3), (5, 180)):
        scene.add(values)
    assert scene.overall == 200 and scene.per_image == [200, 180]
    scene.add((240,))
    assert scene.overall == 240 and scene.per_image is None
    scene.add(UNKNOWN)
    assert scene.overall is None
    plain = Brightest(1)
    plain.add((12,))
    plain.add((9,))
    assert plain.overall == 12 and plain.per_image == [12]


def test_a_dark_8_bit_slide_is_not_sent_to_the_bit_depth(caplog):
    import logging

    from minseg.inference.segment import warn_if_dark

    with caplog.at_level(logging.WARNING, logger="minseg.segment"):
        warn_if_dark({"slide": "blank", "brightest": 3, "bit_depth": 16, "stored_bits": 8})
        warn_if_dark({"slide": "camera", "brightest": 16, "bit_depth": 16, "stored_bits": 16})
        # a scene whose slide is bright but one of its images nearly black: that image is named
        images = {"ppl": {"brightest": 250, "stored_bits": 8, "bit_depth": 16, "file": "p.tif"},
                  "bse": {"brightest": 9, "stored_bits": 16, "bit_depth": 16, "file": "b.tif"}}
        warn_if_dark({"slide": "scene", "brightest": 250, "bit_depth": 16, "stored_bits": 16, "images": images,
                      "scene_files": 2})
        warn_if_dark({"slide": "lit", "brightest": 250, "bit_depth": 16, "stored_bits": 16,
                      "images": {**images, "bse": {**images["bse"], "brightest": 17}}, "scene_files": 2})
        # one file holding both images' channels has one bit depth: the hint sends it to --scene
        one_file = {name: {**image, "file": "six.tif"} for name, image in images.items()}
        warn_if_dark({"slide": "six", "brightest": 250, "bit_depth": 16, "stored_bits": 16, "images": one_file,
                      "scene_files": 1})
    hints = {r.fields["slide"]: r.fields["hint"] for r in caplog.records if r.getMessage() == "segment.slide_dark"}
    assert "blank or underexposed" in hints["blank"] and "bit_depth" not in hints["blank"]
    assert "segment.bit_depth (--bit-depth)" in hints["camera"]
    assert hints["scene"].startswith("the brightest pixel of its bse image is 9 of 255 as read (16-bit samples)")
    assert "segment.bit_depth (--bit-depth bse=BITS)" in hints["scene"] and "lit" not in hints
    assert "--scene" in hints["six"] and "--scene" not in hints["scene"]


def test_finished_outputs_of_before_bit_depths_stay_finished_at_the_default():
    """A summary.json written before bit depths were recorded is of a slide read as 16-bit: still done at the
    default, redone when the slide is read with another bit depth."""
    from types import SimpleNamespace

    from minseg.inference.segment import source_change

    plan = SimpleNamespace(uri="a.tif", source_height=2, source_width=3, identity=(), read_bit_depth=16)
    old = {"uri": "a.tif", "source_shape": [2, 3]}
    assert source_change(old, plan) is None
    assert source_change(old, SimpleNamespace(**{**vars(plan), "read_bit_depth": 12})) == \
        "the outputs read its samples as 16-bit, now 12-bit (segment.bit_depth or the ensemble's)"


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
    got = zarr_levels(tmp_path / "section")[0]
    top2 = torch.topk(fused, 2, dim=0).values
    near_tie = (top2[0] - top2[1]).numpy() < 2e-3  # actors send fp16
    mismatch = got != expected.numpy()
    assert not (mismatch & ~near_tie).any(), int((mismatch & ~near_tie).sum())


def test_rerun_skips_finished_slides_and_force_redoes_them(ray_session, manifests, test_slides, tmp_path,
                                                           minseg_events):
    first = run(manifests["wv"], [test_slides["small"]], tmp_path)
    assert len(first.done) == 1
    stamp = (tmp_path / "small" / "summary.json").stat().st_mtime_ns
    again = run(manifests["wv"], [test_slides["small"]], tmp_path)
    assert again.done == [] and [s.slide for s in again.skipped] == ["small"]
    assert (tmp_path / "small" / "summary.json").stat().st_mtime_ns == stamp
    assert "skipped" in (tmp_path / "slides.csv").read_text()
    # outputs its summary lists removed by hand: redone (it was skipped as complete, the labels gone)
    import shutil

    for plot in (tmp_path / "small").glob("*.png"):  # plots a user deleted to save space: no redo for them
        if plot.name != "preview.png":
            plot.unlink()
    assert run(manifests["wv"], [test_slides["small"]], tmp_path).skipped
    (tmp_path / "small" / "preview.png").unlink()
    shutil.rmtree(tmp_path / "small" / "segmentation.ome.zarr" / "labels")
    redone = run(manifests["wv"], [test_slides["small"]], tmp_path)
    assert len(redone.done) == 1 and redone.skipped == []
    assert (tmp_path / "small" / "preview.png").is_file()
    assert (tmp_path / "small" / "segmentation.ome.zarr" / "labels" / "classes" / "0" / "zarr.json").is_file()
    assert run(manifests["wv"], [test_slides["small"]], tmp_path).skipped  # complete again: skipped
    # its summary damaged by hand: redone in its own folder (the zarr names its source), not moved to `small-<hash>/`
    (tmp_path / "small" / "summary.json").write_text('{"ur')
    assert [d["slide"] for d in run(manifests["wv"], [test_slides["small"]], tmp_path).done] == ["small"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("small")) == ["small"]
    said = [r.fields["reason"] for r in minseg_events if r.getMessage() == "segment.redo"]
    assert said[0].startswith("outputs listed in its summary.json are gone: preview.png")
    assert said[-1].startswith("its summary.json is missing or not readable")
    # an earlier run's output given as a slide (a preview, rewritten when its slide is redone): refused
    with pytest.raises(InputError, match=r"preview.png lies in \S+/small/, the output folder of \S+small.png "
                                         r"\(replaced whole when that is redone\)"):
        run(manifests["wv"], [str(tmp_path / "small" / "preview.png")], tmp_path)
    other = run(manifests["soft"], [test_slides["small"]], tmp_path)  # another ensemble: redone
    assert len(other.done) == 1
    # another run into the same output: the batch tables describe every slide there, not just its own
    missing = str(tmp_path / "nowhere.tif")
    later = run(manifests["soft"], [test_slides["section"], missing], tmp_path)
    assert [s["slide"] for s in later.done] == ["section"] and [f.slide for f in later.failed] == ["nowhere"]
    rows = {line.split(",")[0]: line for line in (tmp_path / "slides.csv").read_text().splitlines()[1:]}
    assert set(rows) == {"small", "section"} and ",done," in rows["small"] and ",done," in rows["section"]
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert [s["slide"] for s in summary["slides"]] == ["section", "small"] and summary["wall_seconds"] > 0
    assert [f["slide"] for f in json.loads((tmp_path / "failures.json").read_text())] == ["nowhere"]
    again = run(manifests["soft"], [test_slides["small"]], tmp_path, force=True)  # redone; rows replaced, others kept
    assert len(again.done) == 1 and len((tmp_path / "slides.csv").read_text().splitlines()) == 3
    assert [f["slide"] for f in json.loads((tmp_path / "failures.json").read_text())] == ["nowhere"]


def test_a_redo_keeps_the_finished_outputs_until_it_is_finished(ray_session, manifests, test_slides, tmp_path):
    """A finished slide redone (its file replaced) whose redo fails keeps its finished outputs, byte for byte, and
    says so; a redo that succeeds replaces them whole (a file the redo does not write goes); no redo folder is
    left behind."""
    import shutil

    slide, out = tmp_path / "in" / "section.tif", tmp_path / "out"
    slide.parent.mkdir()
    shutil.copy(test_slides["section"], slide)
    assert len(run(manifests["wv"], [str(slide)], out, formats=["zarr", "tiff"]).done) == 1
    finished = {p.relative_to(out / "section"): p.read_bytes() for p in (out / "section").rglob("*") if p.is_file()}
    assert Path("labels.tif") in finished

    shutil.copy(test_slides["corrupt"], slide)  # the same name, now cut off after its header: planned, then fails
    failed = run(manifests["wv"], [str(slide)], out, formats=["zarr", "tiff"])
    assert failed.done == [] and [f.slide for f in failed.failed] == ["section"]
    assert "the outputs an earlier run finished in section/ are kept as they were" in failed.failed[0].reason
    assert {p.relative_to(out / "section"): p.read_bytes()
            for p in (out / "section").rglob("*") if p.is_file()} == finished
    assert not (out / ".minseg-redo").exists()
    reasons = [f["reason"] for f in json.loads((out / "failures.json").read_text())]
    assert len(reasons) == 1 and "are kept as they were" in reasons[0]

    shutil.copy(test_slides["section"], slide)  # back, and another ensemble without TIFFs: redone, replaced whole
    redone = run(manifests["soft"], [str(slide)], out)
    assert len(redone.done) == 1 and not redone.failed and not (out / ".minseg-redo").exists()
    summary = json.loads((out / "section" / "summary.json").read_text())
    assert summary["fusion"] == "soft" and not (out / "section" / "labels.tif").exists()
    assert np.array_equal(zarr_levels(out / "section")[0], single_pass(manifests["soft"], str(slide))[0])
    assert json.loads((out / "failures.json").read_text()) == []
    retried_finishing_returns_what_was_finished(manifests["soft"], str(slide), out)
    # as an interrupted redo leaves it: this slide's goes when it is skipped, another slide's waits for its run
    for name in ("section", "other"):
        stale = out / ".minseg-redo" / name / ".minseg" / "plan.json"
        stale.parent.mkdir(parents=True)
        stale.write_text("{}")
    assert [s.slide for s in run(manifests["soft"], [str(slide)], out).skipped] == ["section"]
    assert [p.name for p in (out / ".minseg-redo").iterdir()] == ["other"]


def retried_finishing_returns_what_was_finished(manifest_uri: str, slide: str, out: Path) -> None:
    """A finishing task Ray retries after its first try finished the slide (the block records gone): it returns that
    summary; a redo finished but not moved into place is moved."""
    import dataclasses
    import shutil

    from minseg.ensemble.manifest import load_manifest
    from minseg.inference.finish import finish_slide
    from minseg.inference.plan import plan_slide
    from minseg.io.storage import Storage, redo_folder

    settings, storage = SegmentSettings(manifest_uri=manifest_uri, slides=[slide], output_uri=str(out)), Storage()
    manifest = load_manifest(manifest_uri)
    classes = manifest.classes["classes"]
    plan = plan_slide(slide, "section", manifest, settings, storage, str(out))
    done = json.loads((out / "section" / "summary.json").read_text())
    facts = {key: done[key] for key in ("created", "ensemble_digest", "uri")}
    assert finish_slide(plan, settings, storage, classes, facts, {}) == done
    staged = Path(redo_folder(str(out / "section")))
    shutil.copytree(out / "section", staged)
    later = {**done, "created": "2099-01-01T00:00:00Z"}
    (staged / "summary.json").write_text(json.dumps(later))
    redo = dataclasses.replace(plan, output_uri=str(staged), replaces=str(out / "section"))
    assert finish_slide(redo, settings, storage, classes, {**facts, "created": later["created"]}, {}) == later
    assert json.loads((out / "section" / "summary.json").read_text()) == later and not staged.exists()


def test_outputs_are_bit_identical_for_any_block_size_actor_count_and_a_killed_actor(
        ray_session, manifests, test_slides, tmp_path):
    """The block pipeline equals one whole-slide pass bit for bit: any block size, two actors, an actor
    SIGKILLed mid-run (Ray Data redoes its blocks), a batch size of one, three blocks per task."""
    labels, uncertainty = single_pass(manifests["wv"], test_slides["section"])
    assert len(run(manifests["wv"], [test_slides["section"]], tmp_path / "2048", block=2048).done) == 1
    killed: list[int] = []

    def assassin():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            time.sleep(0.5)
            killed.extend(kill_processes_titled("ray::MapWorker(MapBatches(BlockSegmenter", limit=1))

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    summary = run(manifests["wv"], [test_slides["section"]], tmp_path / "killed", actors=2, batch_size=1, block=64,
                  blocks_per_task=3)
    thread.join()
    assert killed, "no inference actor was found to kill"
    assert len(summary.done) == 1 and not summary.failed
    for name in ("2048", "killed"):  # one block for the slide; 24 blocks of 64 pixels
        assert np.array_equal(zarr_levels(tmp_path / name / "section")[0], labels), name
        assert np.array_equal(zarr_levels(tmp_path / name / "section", "uncertainty")[0], uncertainty), name
    pyramids = [zarr_levels(tmp_path / name / "section") for name in ("2048", "killed")]
    assert len(pyramids[0]) == len(pyramids[1]) > 1
    for got, expected in zip(*pyramids):
        assert np.array_equal(got, expected)


def test_a_killed_driver_is_resumed_block_by_block(ray_session, manifests, test_slides, tmp_path):
    """SIGKILL a ``minseg segment`` process once some blocks are recorded: the slide is visibly incomplete
    (no summary, zarr status incomplete), and the next run redoes only the missing blocks, bit-identically."""
    import os
    import signal
    import subprocess
    import sys

    import zarr

    out = tmp_path / "out"
    environment = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "minseg", "segment", test_slides["section"], "--manifest", manifests["wv"],
               "--out", str(out), "--set", "segment.block=64", "--set", "segment.output_tile=64",
               "--set", "segment.batch_size=1", "--set", "segment.cpus_per_actor=0.5",
               "--set", "segment.preview_max_side=128"]  # as run() has it: records hold preview samples
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "section" / ".minseg" / "blocks"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and len(list(records.glob("*.npz"))) < 3:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = len(list(records.glob("*.npz")))
    assert 3 <= recorded < 24, f"{recorded} block records when the driver was killed"
    assert not (out / "section" / "summary.json").exists()
    root = zarr.open_group(str(out / "section" / "segmentation.ome.zarr"), mode="r")
    assert root.attrs["minseg"]["status"] == "incomplete"

    resumed = run(manifests["wv"], [test_slides["section"]], out, block=64, batch_size=1)
    assert len(resumed.done) == 1 and resumed.blocks <= 24 - recorded
    labels, uncertainty = single_pass(manifests["wv"], test_slides["section"])
    assert np.array_equal(zarr_levels(out / "section")[0], labels)
    assert np.array_equal(zarr_levels(out / "section", "uncertainty")[0], uncertainty)
    # another block size cannot reuse those blocks: the slide is redone from scratch, same result
    other = run(manifests["wv"], [test_slides["section"]], out, block=128, force=True)
    assert other.blocks == 6 and np.array_equal(zarr_levels(out / "section")[0], labels)


def test_slides_from_and_outputs_to_s3(ray_session, manifests, test_slides, s3):
    storage = s3.storage()
    storage.upload_file(test_slides["section"], s3.uri("in/a/section.tif"))
    storage.upload_file(test_slides["small"], s3.uri("in/b/small.png"))
    config = MinsegConfig()
    config.storage = s3.settings(forward_credentials=True)  # the Ray workers started before these credentials
    config.segment = SegmentSettings(manifest_uri=manifests["wv"], slides=[s3.uri("in/*/*")],
                                     output_uri=s3.uri("out/run1"), cpus_per_actor=0.5, block=128,
                                     preview_max_side=128, output_tile=64, formats=["zarr", "tiff"])
    summary = segment_slides(config)
    assert sorted(d["slide"] for d in summary.done) == ["section", "small"], summary.failed
    keys = sorted(info.uri for info in storage.list(s3.uri("out/run1/")))
    for slide in ("section", "small"):
        for name in ("labels.tif", "uncertainty.tif", "preview.png", "summary.json",
                     "segmentation.ome.zarr/zarr.json", "segmentation.ome.zarr/labels/classes/0/zarr.json"):
            assert s3.uri(f"out/run1/{slide}/{name}") in keys, name
    assert not [k for k in keys if "/.minseg/" in k]
    assert s3.uri("out/run1/slides.parquet") in keys and s3.uri("out/run1/run_summary.json") in keys
    import io

    labels = tifffile.imread(io.BytesIO(storage.read_bytes(s3.uri("out/run1/section/labels.tif"))))
    assert labels.shape == (200, 330)
    from minseg.io.ngff import SegmentationArrays

    arrays = SegmentationArrays(s3.uri("out/run1/section/segmentation.ome.zarr"), storage, read_only=True)
    assert arrays.status == "complete"
    assert np.array_equal(arrays.read(arrays.LABELS, 0, 0, 200, 0, 330), labels)
    again = segment_slides(config)
    assert [s.slide for s in again.skipped] == ["section", "small"]
    assert s3.uri("out/run1/section/particles.parquet") in keys and s3.uri("out/run1/mineralogy/mineralogy.md") in keys
    forced = config.model_copy(update={"segment": config.segment.model_copy(
        update={"force": True, "slides": [s3.uri("in/b/small.png")]})})
    storage.write_text(s3.uri("out/run1/small/earlier_only.txt"), "a file of the earlier run only")
    assert [d["slide"] for d in segment_slides(forced).done] == ["small"]  # redone in its redo folder, then copied
    assert sorted(info.uri for info in storage.list(s3.uri("out/run1/"))) == keys  # the earlier run's file gone
    finished = {info.uri: storage.read_bytes(info.uri) for info in storage.list(s3.uri("out/run1/small/"))}
    storage.upload_file(test_slides["cut"], s3.uri("in/b/small.png"))  # replaced by a cut copy: a redo that fails
    failed = segment_slides(forced)
    assert failed.done == [] and "are kept as they were" in failed.failed[0].reason
    assert {info.uri: storage.read_bytes(info.uri) for info in storage.list(s3.uri("out/run1/small/"))} == finished
    assert not list(storage.list(s3.uri("out/run1/.minseg-redo/")))

    # measure the exported labels.tif on S3 into S3: the same numbers as segment computed from its blocks
    from minseg.inference.config import MeasureSettings
    from minseg.inference.measure import measure_label_maps

    config.measure = MeasureSettings(labels=[s3.uri("out/run1/*/labels.tif")], output_uri=s3.uri("out/measured"),
                                     block=96)
    measured = measure_label_maps(config)
    assert sorted(row["slide"] for row in measured.done) == ["section", "small"] and not measured.failed
    for slide in ("section", "small"):
        segmented = json.loads(storage.read_text(s3.uri(f"out/run1/{slide}/mineralogy.json")))
        again = json.loads(storage.read_text(s3.uri(f"out/measured/{slide}/mineralogy.json")))
        assert again["tally"] == segmented["tally"] and again["classes"] == segmented["classes"]
        assert again["particles"] == segmented["particles"]
    keys = {info.uri for info in storage.list(s3.uri("out/measured/"))}
    assert {s3.uri("out/measured/section/grains.parquet"), s3.uri("out/measured/slides.csv"),
            s3.uri("out/measured/mineralogy/mineralogy.json")} <= keys


def test_real_slides_every_format_read_tile_by_tile(ray_session, shared_data, tmp_path):
    """BigTIFF ZSTD (pyramid), striped grey TIFF, NDPI and SVS, at 1/8 scale: coarser levels are read where
    the pyramid has them, others are read tile by tile and reduced."""
    from tests.inference.conftest import write_manifest

    manifest = write_manifest(tmp_path / "m", "wv", scale=0.125)
    slides = sorted(str(p) for p in (shared_data / "slides").iterdir())
    summary = run(manifest, slides, tmp_path / "out", preview_max_side=256, batch_size=8, block=512)
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
        labels = zarr_levels(tmp_path / "out" / slide)[0]
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
    # a density for a class the ensemble does not have: refused before any work, naming the key and classes
    assert main(["segment", test_slides["small"], "--out", str(tmp_path / "d"), *common,
                 "--set", 'mineralogy.densities={"pyrit": 5.0}']) == 2
    assert ("mineralogy.densities names 'pyrit', not a class of the ensemble "
            "(background, pyrite, chalcopyrite)") in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_slide_over_the_configured_limits_is_a_failure_entry(manifests, test_slides, tmp_path):
    """Refused from its header while planning (before any Ray work), named in failures.json with the limit."""
    summary = run(manifests["soft"], [test_slides["section"]], tmp_path, limits={"max_pixels": 1000})
    (failure,) = summary.failed
    assert "exceeds segment.limits.max_pixels (1,000)" in failure.reason and not summary.done
    assert json.loads((tmp_path / "failures.json").read_text()) == [failure.to_document()]


def test_thread_map_keeps_the_order_and_raises():
    """Planning and preparing thousands of slides runs on a thread pool; results come back in input order."""
    from minseg.inference.segment import thread_map

    def slow_square(value):
        time.sleep(0.01 * max(0, 5 - value))  # later items finish first
        if value == 99:
            raise RuntimeError("boom")
        return value * value

    assert thread_map(slow_square, [0, 1, 2, 3, 4], 4) == [0, 1, 4, 9, 16]
    assert thread_map(slow_square, [3], 8) == [9]
    with pytest.raises(RuntimeError, match="boom"):
        thread_map(slow_square, [1, 99, 2], 3)


def test_slide_tables_keep_every_slides_columns(tmp_path):
    """Slides differ in their columns (weight % only where a sample was found, older summaries without
    particles): the parquet table keeps the union, as the CSV does, instead of the first row's columns."""
    import pyarrow.parquet as pq

    from minseg.inference.segment import SegmentResult, _write_run_summary
    from minseg.io.storage import Storage

    def summary(slide, weight):
        modal = {"pyrite": {"pixels": 5, "area_percent": 50.0, "weight_percent": weight}}
        grains = {"pyrite": {"count": 1, "mean_area_px": 5.0}}
        return {**_slide_summary(slide), "modal_mineralogy": modal, "grains": grains}

    result = SegmentResult(str(tmp_path), "m.json", "d", 1.0, done=[summary("a", None), summary("b", 100.0)])
    _write_run_summary(result, Storage())
    table = pq.read_table(tmp_path / "slides.parquet").to_pylist()
    assert [row["wt_pct:pyrite"] for row in table] == [None, 100.0]
    assert "wt_pct:pyrite" in (tmp_path / "slides.csv").read_text().splitlines()[0]


def _slide_summary(slide: str, out: Path | None = None, digest: str = "d") -> dict:
    """A finished slide's summary; written to its folder under ``out`` as segment leaves it."""
    summary = {"slide": slide, "uri": f"{slide}.tif", "shape": [2, 5], "tiles": 1, "ensemble_digest": digest,
               "active_seconds": 1.0, "wall_seconds": 1.0,
               "modal_mineralogy": {"pyrite": {"pixels": 5, "area_percent": 50.0}}, "grains": {}}
    if out is not None:
        (out / slide).mkdir(parents=True, exist_ok=True)
        (out / slide / "summary.json").write_text(json.dumps(summary))
    return summary


def test_run_tables_are_put_in_place_whole(tmp_path):
    """The run's tables and ``run_summary.json`` are staged, then put in place together, the summary last: a
    publication cut short (a request failing after one table was in place) leaves a folder that reads as
    unfinished, never the earlier summary beside newer tables, and the next run completes it before anything
    else; a run stopped before its tables were complete leaves nothing behind (its remains are deleted)."""
    from minseg.inference.outputs import finish_run_tables
    from minseg.inference.segment import SegmentResult, SlideOutcome, _write_run_summary
    from minseg.io.storage import Storage, StorageError, staging_folder

    class FailsAfterOnePlaced(Storage):
        placed = 0

        def _place(self, source, destination):
            if self.placed:
                raise StorageError(f"{destination}: the request failed")
            self.placed += 1
            super()._place(source, destination)

    out = str(tmp_path)
    _write_run_summary(SegmentResult(out, "m.json", "d", 1.0, done=[_slide_summary("a", tmp_path)]), Storage())
    assert json.loads((tmp_path / "run_summary.json").read_text())["run_files"] == [
        "failures.json", "mineralogy", "slides.csv", "slides.parquet"]
    with pytest.raises(StorageError, match=r"the request failed; .* is left without run_summary\.json "
                                           r"\(unfinished\): its new outputs are complete in .*/\.minseg-redo/"
                                           r"\.segment-tables, and the next minseg segment into it puts them in place"):
        _write_run_summary(SegmentResult(out, "m.json", "d", 1.0, done=[_slide_summary("b", tmp_path)]),
                           FailsAfterOnePlaced())
    assert not (tmp_path / "run_summary.json").exists()  # unfinished, and `measure` still refuses the folder
    with pytest.raises(InputError, match=r"holds the outputs of minseg segment \(.minseg-redo/.segment-tables/run_"):
        refuse_other_command_outputs(out, "measure", "measure.output_uri", Storage())

    assert finish_run_tables(Storage(), out, "segment")
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert [row["slide"] for row in summary["slides"]] == ["a", "b"]  # the earlier run's row merged, as planned
    assert [line.split(",")[0] for line in (tmp_path / "slides.csv").read_text().splitlines()[1:]] == ["a", "b"]
    assert not (tmp_path / ".minseg-redo").exists()

    staged = staging_folder(out, "segment")  # a run stopped while writing its tables: no summary staged
    Storage().write_text(f"{staged}/slides.csv", "slide\nhalf")
    assert not finish_run_tables(Storage(), out, "segment")
    assert not (tmp_path / ".minseg-redo").exists()
    assert json.loads((tmp_path / "run_summary.json").read_text()) == summary
    assert (tmp_path / "slides.csv").read_text().splitlines()[1].startswith("a,")

    # a slide redone (another ensemble) by a run stopped before its tables were put in place, another run then
    # touching only b: a's row is read again from its own summary, not carried over as it was; a slide whose
    # outputs are gone leaves the tables
    _slide_summary("a", tmp_path, digest="other")
    _write_run_summary(SegmentResult(out, "m.json", "d", 1.0, done=[_slide_summary("b", tmp_path)]), Storage())
    rows = {row["slide"]: row for row in json.loads((tmp_path / "run_summary.json").read_text())["slides"]}
    assert rows["a"]["ensemble_digest"] == "other" and rows["a"]["status"] == "done"
    # a batch report that cannot be built (here a mineralogy.json of another layout) does not cost the run its
    # tables and failure list: they are put in place without a report, the summary saying why
    (tmp_path / "b" / "mineralogy.json").write_text(json.dumps({"modal_mineralogy": {}}))
    failed = SlideOutcome("c", "c.tif", "unreadable")
    reported = SegmentResult(out, "m.json", "d", 1.0, done=[_slide_summary("b", tmp_path)], failed=[failed])
    _write_run_summary(reported, Storage())
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["report_error"] == reported.report_error  # the console says it too
    assert reported.report_error.startswith("KeyError") and not (tmp_path / "mineralogy").exists()
    assert [f["slide"] for f in json.loads((tmp_path / "failures.json").read_text())] == ["c"]
    (tmp_path / "b" / "mineralogy.json").unlink()

    # a summary that cannot be read now (a failed request) is not taken for outputs gone: its row stays as it was
    class SummaryRequestFails(Storage):
        def read_text(self, uri, *args, **kwargs):
            if str(uri).endswith("/a/summary.json"):
                raise StorageError(f"{uri}: the request failed")
            return super().read_text(uri, *args, **kwargs)

    _write_run_summary(SegmentResult(out, "m.json", "d", 1.0), SummaryRequestFails())
    assert json.loads((tmp_path / "run_summary.json").read_text())["slides"][0] == rows["a"]
    (tmp_path / "a" / "summary.json").unlink()
    _write_run_summary(SegmentResult(out, "m.json", "d", 1.0), Storage())
    assert [row["slide"] for row in json.loads((tmp_path / "run_summary.json").read_text())["slides"]] == ["b"]


def test_the_library_refuses_another_commands_output_folder(manifests, test_slides, tmp_path):
    """Not only the CLI (naming --out): ``segment_slides`` itself refuses a measure run's folder, writing nothing."""

    (tmp_path / "measure_summary.json").write_text("{}")
    with pytest.raises(InputError, match=r"^segment.output_uri: .* holds the outputs of minseg measure"):
        run(manifests["soft"], [test_slides["section"]], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["measure_summary.json"]


def test_segment_refuses_before_preparing_any_slide(ray_session, manifests, test_slides, tmp_path):
    from minseg.runtime import ResourceError

    with pytest.raises(ResourceError, match="segment.cpus_per_actor 4 CPUs"):
        run(manifests["wv"], [test_slides["section"]], tmp_path / "out", cpus_per_actor=4)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tif"))


def test_a_manifest_whose_model_options_do_not_fit_the_weights_is_one_error(ray_session, manifests, test_slides,
                                                                            tmp_path):
    """A hand-edited ``model_options`` passes validation and the hash check (the weights are unchanged) and would
    fail when the actors load the member, each with Ray's tracebacks: found with the manifest, on the driver (the
    meta device), one ManifestError naming it, the member and the file, before any slide is read."""
    import json as json_module

    from minseg.ensemble.manifest import ManifestError

    document = json_module.loads(open(manifests["wv"]).read())
    document["members"][1]["model_options"] = {"width": 0.25}
    edited = tmp_path / "manifest.json"
    edited.write_text(json_module.dumps(document))
    with pytest.raises(ManifestError) as error:
        run(str(edited), [test_slides["section"]], tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"{edited}: member 'unet' (unet, ") and "model.pt) cannot be loaded" in message
    assert "(model / model_options or the class count differ)" in message and "Traceback" not in message
    assert "of another shape (first '" in message  # which tensors, and their shapes
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tif"))


def test_a_slide_table_left_with_no_slide_keeps_its_header(tmp_path):
    """Every slide listed before failed now: slides.csv / .parquet say there is none, with their columns (not an
    empty file that reads as no table)."""
    import pyarrow.parquet as pq

    from minseg.inference.outputs import SLIDE_COLUMNS, write_slide_tables
    from minseg.io.storage import Storage

    write_slide_tables([], Storage(), str(tmp_path))
    assert (tmp_path / "slides.csv").read_text().splitlines() == [",".join(SLIDE_COLUMNS)]
    table = pq.read_table(tmp_path / "slides.parquet")
    assert table.num_rows == 0 and table.column_names == list(SLIDE_COLUMNS)


def test_a_block_that_fails_on_the_gpu_says_what_to_change_or_replaces_its_actor():
    """No GPU here: the errors torch raises there, as the actor's ``except`` receives them. Out of memory names
    the settings that lower the need (the actor goes on); any other CUDA error marks the actor's context lost (it
    exits before its next batch, for Ray Data to restart it and retry that batch); other errors fail the slide."""
    import torch

    from minseg.inference.segment import block_error

    reason, lost = block_error("r0c1", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 16)
    assert reason.startswith("block r0c1: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (out of "
                             "GPU memory at segment.batch_size 16: lower it, set segment.gpu_memory_gib")
    assert not lost
    reason, lost = block_error("r0c1", torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
                               16)
    assert reason == "block r0c1: AcceleratorError: CUDA error: an illegal memory access was encountered" and lost
    assert block_error("r0c1", OSError("No space left on device"), 16) == \
        ("block r0c1: OSError: No space left on device", False)
