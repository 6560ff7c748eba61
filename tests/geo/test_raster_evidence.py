"""Prospectivity from pre-gridded evidence only (no sample table), deposits and barren sites as rasters.

Fixtures of the issue's shape: element grids interpolated elsewhere on their own grids and cell sizes (one
glob of GeoTIFFs), a 0/1 deposit raster on a finer grid, a barren raster on a coarser one; and the same on
the real GTK data (element grids made from the real till table, the real IOCG occurrences rasterised).
"""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from minseg.config.schema import MinsegConfig
from minseg.geo.config import CellLayer, ProspectInputError, ProspectSettings
from minseg.geo.crs import parse_crs
from minseg.io.geotiff import GridGeometry, write_geotiff
from minseg.io.storage import Storage
from minseg.synth.config import SurveySynth
from minseg.synth.survey import write_survey

WORKING = parse_crs("EPSG:3067", "test")
MEMBER = {"model": "mfaf", "stages": [{"epochs": 1, "batch_size": 16}], "scaling": {"cpus_per_worker": 0.5},
          "optimizer": {"name": "sgd", "lr": 0.02}, "loss": {"name": "self_distillation"}}
TINY = {"backbone": "resnet18", "width": 0.125, "dilation_rates": [1, 2, 4], "branch_channels": 8}
EXTENT = [350000, 7450000, 380000, 7480000]


def _grid_from_points(x, y, values, geometry: GridGeometry) -> np.ndarray:
    """Nearest-sample grid of log10 values: stands in for grids a user interpolated in another package."""
    from scipy.spatial import cKDTree

    xs, ys = geometry.pixel_centres()
    gx, gy = np.meshgrid(xs, ys)
    _, nearest = cKDTree(np.column_stack([x, y])).query(np.column_stack([gx.ravel(), gy.ravel()]), k=4)
    return np.log10(np.asarray(values)[nearest].mean(axis=1)).reshape(geometry.rows, geometry.cols).astype(np.float32)


def _mark(points_xy, geometry: GridGeometry, dtype=np.uint8, nodata=None) -> np.ndarray:
    values = np.zeros((geometry.rows, geometry.cols), dtype)
    xs, ys = geometry.pixel_centres()
    for x, y in points_xy:
        values[int(np.argmin(np.abs(ys - y))), int(np.argmin(np.abs(xs - x)))] = 1
    return values


@pytest.fixture(scope="module")
def gridded(tmp_path_factory):
    """Element grids on two grids (400 m; 300 m shifted), deposits at 50 m (each deposit two adjacent cells), barren
    cells at 1 km (far from every deposit, nodata 255 around the surveyed part)."""
    import pyarrow.csv as pacsv

    root = tmp_path_factory.mktemp("gridded")
    write_survey(f"{root}/survey", SurveySynth(n_samples=500, width_m=30000, height_m=30000, cell_m=250,
                                               n_deposits=16, n_faults=10), seed=3)
    table = pacsv.read_csv(f"{root}/survey/samples.csv").to_pandas()
    grids = {"Au": GridGeometry(349000.0, 7481000.0, 400.0, 400.0, 80, 80, 3067),
             "As": GridGeometry(349000.0, 7481000.0, 400.0, 400.0, 80, 80, 3067),
             "Pb": GridGeometry(349150.0, 7480850.0, 300.0, 300.0, 105, 105, 3067),
             "Zn": GridGeometry(349150.0, 7480850.0, 300.0, 300.0, 105, 105, 3067)}
    for element, geometry in grids.items():
        import pandas as pd

        values = pd.to_numeric(table[element].astype(str).str.lstrip("<"), errors="coerce")
        usable = (values > 0).to_numpy()
        write_geotiff(f"{root}/grids/{element}_idw.tif",
                      _grid_from_points(table.x[usable], table.y[usable], values[usable].to_numpy(), geometry),
                      geometry, nodata=float("nan"))
    deposits = json.loads(open(f"{root}/survey/deposits.geojson").read())["features"]
    xy = np.array([f["geometry"]["coordinates"] for f in deposits])
    fine = GridGeometry(349000.0, 7481000.0, 50.0, 50.0, 640, 640, 3067)
    marked = _mark(xy, fine)
    marked[:, 1:] |= marked[:, :-1]  # each deposit marks two adjacent 50 m cells: one site per 250 m cell
    write_geotiff(f"{root}/deposits.tif", marked, fine, nodata=None)
    coarse = GridGeometry(350000.0, 7480000.0, 1000.0, 1000.0, 30, 30, 3067)
    xs, ys = coarse.pixel_centres()
    gx, gy = np.meshgrid(xs, ys)
    far = np.min(np.hypot(gx[..., None] - xy[:, 0], gy[..., None] - xy[:, 1]), axis=-1) > 5000
    barren = np.where(far, 1, 0).astype(np.uint8)
    barren[:3] = 255  # not surveyed: nodata, never barren
    write_geotiff(f"{root}/barren.tif", barren, coarse, nodata=255)
    return root, xy, int(far[3:].sum())


def raster_config(root, **changes) -> MinsegConfig:
    prospect = {
        "deposits": {"raster": f"{root}/deposits.tif"},
        "barren": {"raster": f"{root}/barren.tif"},
        "rasters": [{"uri": f"{root}/grids/*_idw.tif", "screen": True},
                    {"uri": f"{root}/survey/lithology.tif", "name": "lithology", "kind": "categorical",
                     "max_classes": 3}],
        "grid": {"crs": "EPSG:3067", "cell_m": 250, "extent": EXTENT},
        "screening": {"max_elements": 3, "critical_z": 1.0},
        "windows": {"size": 16, "stride": 6, "max_negatives": 150},
        "cv": {"folds": 2},
        "prediction": {"stride": 6, "tile": 40},
        "training": {"defaults": MEMBER, "members": [{"name": "mfaf-r18", "model_options": TINY}]},
    }
    prospect.update(changes)
    return MinsegConfig.model_validate({"run": {"name": "r", "output_uri": f"{root}/out"},
                                        "ray": {"task_cpus": 0.25}, "prospect": prospect})


def _phases(config):
    from minseg.geo.prospect import build_evidence, prepare_trials, read_inputs

    settings, storage, out = config.prospect, Storage(), f"{config.run.output_uri}/phases"
    inputs = read_inputs(settings, WORKING, storage, out, 0.25)
    evidence = build_evidence(settings, inputs, WORKING, storage, out, 0.25)
    windows, folds, trials = prepare_trials(settings, evidence, inputs.samples, storage, out, 0)
    return inputs, evidence, windows, folds, trials


def test_raster_only_evidence_with_deposit_and_barren_rasters(gridded):
    """No sample table: the glob gives one screened layer per file (resampled onto the 250 m grid), deposits are
    the marked cells (two 50 m cells of one deposit count once), barren cells are the only negatives."""
    root, deposit_xy, barren_cells = gridded
    inputs, evidence, windows, folds, trials = _phases(raster_config(root))
    assert inputs.samples is None and evidence.grids == {}
    assert [(i, r.name) for i, r in inputs.rasters] == [(0, "As_idw"), (0, "Au_idw"), (0, "Pb_idw"), (0, "Zn_idw"),
                                                         (1, "lithology")]
    assert set(evidence.layer_reports) == {"As_idw", "Au_idw", "Pb_idw", "Zn_idw", "lithology"}
    assert evidence.layer_reports["Pb_idw"]["source_cell"] == [300.0, 300.0]
    # one site per deposit: the second marked 50 m cell falls in the same 250 m cell (or, at a cell edge, the next)
    assert len(deposit_xy) <= inputs.deposits.report["grid_cells"] <= 2 * len(deposit_xy)
    assert inputs.deposits.report["marked_cells"] == 2 * len(deposit_xy)
    # barren 1 km cells -> 250 m grid cells (one each), the unsurveyed nodata rows left out
    assert len(evidence.barren_cells) == barren_cells
    negatives = windows.labels == 0
    barren = {tuple(c) for c in evidence.barren_cells.tolist()}
    assert negatives.sum() == min(150, barren_cells)
    assert all((r, c) in barren for r, c in zip(windows.rows[negatives], windows.cols[negatives]))

    final = trials[None]
    rows = {r["element"]: r for r in final.screening}
    assert set(rows) == {"As_idw", "Au_idw", "Pb_idw", "Zn_idw"}  # the categorical layer is used as given
    assert all(r["level"] == "raster" for r in rows.values())
    # negatives are the barren cells only (where the layer has a value), not every other cell
    assert all(r["negatives"] <= barren_cells and r["positives"] == len(evidence.unique_cells) for r in rows.values())
    kept = [e for e, r in rows.items() if r["kept"]]
    assert kept and {"Au_idw", "As_idw"} & set(kept)  # the survey's halo elements
    assert final.channels[: len(kept)] == kept
    assert [c for c in final.channels if c.startswith("lithology=")]
    assert not set(final.channels) & (set(rows) - set(kept))  # a layer that failed screening is not a channel
    for fold in folds:  # each fold screens on its own training side
        assert trials[fold.index].screening[0]["positives"] < rows["Au_idw"]["positives"]
    text = open(f"{root}/out/phases/screening/screening.csv").read().splitlines()
    assert text[0] == "element,auc,z_auc,rank_z,positives,negatives,level,kept,weak,reason" and len(text) == 5
    assert all(r["rank_z"] is not None and r["weak"] in (True, False) for r in rows.values())


def test_barren_sites_are_the_sample_level_negatives_of_the_training_side(gridded, ray_session):
    """Samples with screening at sample level and barren sites: negatives are the samples near a barren site (not
    every other sample), and a fold's screening leaves out the barren sites under its test windows."""
    root, _, _ = gridded
    samples = {"uri": f"{root}/survey/samples.csv", "x": "x", "y": "y", "crs": "EPSG:3067", "id": "sample_id",
               "elements": {"Au": "Au", "As": "As"}}
    config = raster_config(root, samples=samples, rasters=[],
                           screening={"level": "samples", "critical_z": 1.0, "sample_radius_m": 1500})
    inputs, evidence, windows, folds, trials = _phases(config)
    final = {r["element"]: r for r in trials[None].screening}
    assert set(final) == {"Au", "As"} and all(r["level"] == "samples" for r in final.values())
    from scipy.spatial import cKDTree

    xy = np.column_stack([inputs.samples.x, inputs.samples.y])
    near_barren = cKDTree(evidence.barren_xy).query(xy, k=1)[0] <= 1500
    near_deposit = cKDTree(evidence.deposit_xy).query(xy, k=1)[0] <= 1500
    usable = np.isfinite(inputs.samples.values["Au"])
    assert final["Au"]["negatives"] == int((near_barren & ~near_deposit & usable).sum())
    assert final["Au"]["negatives"] < usable.sum() - final["Au"]["positives"]  # not every other sample
    for fold in folds:  # the held-out band's barren sites are no training negatives
        assert 0 < trials[fold.index].screening[0]["negatives"] < 0.9 * final["Au"]["negatives"]


def test_raster_only_job_from_the_cli(gridded, ray_session, capsys):
    """The whole job from `minseg prospect`, no samples: maps, targets and a summary that says where deposits and
    negatives came from."""
    import yaml

    from minseg.cli import main
    from minseg.geo.prospect import output_uri

    root, deposit_xy, _ = gridded
    config = raster_config(root)
    path = root / "raster_only.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    assert main(["prospect", "-c", str(path)]) == 0
    out = output_uri(config)
    summary = json.loads(open(f"{out}/summary.json").read())
    assert summary["samples"] == 0 and summary["deposits"]["raster_cells"] == 2 * len(deposit_xy)
    assert summary["barren"]["negative_cells"] > 0 and summary["barren"]["source"].endswith("barren.tif")
    assert set(summary["layers"]) >= {"Au_idw", "lithology"} and summary["kept_elements"]
    assert summary["metrics"]["prediction_rate"]["deposits"] > 0
    assert summary["metrics"]["success_rate"]["deposits"] == summary["deposits"]["cells"]  # one per deposit cell
    assert "Au_idw" in capsys.readouterr().out  # the screening table printed
    from minseg.io.geotiff import read_geotiff

    probability, _, _ = read_geotiff(f"{out}/prospectivity.tif")
    assert np.isfinite(probability).sum() == summary["study_cells"]  # every study cell scored, no other
    for name in ("prospectivity.tif", "targets.csv", "rate_curves.png"):
        assert (root / "out" / "r" / "prospect" / "prospectivity" / name).exists(), name


def test_config_and_input_errors_name_the_key(gridded, tmp_path):
    root, _, _ = gridded
    base = raster_config(root).prospect.model_dump(mode="json", exclude_none=True)

    def invalid(**changes):
        with pytest.raises(ValidationError) as info:
            ProspectSettings.model_validate({**base, **changes})
        return str(info.value)

    assert "without samples the study area comes from grid.extent or grid.reference" in invalid(
        grid={"crs": "EPSG:3067", "cell_m": 250})
    assert "screening.level 'samples' needs prospect.samples" in invalid(screening={"level": "samples"})
    assert "no evidence: give samples, rasters or lines" in invalid(rasters=[])
    assert "only continuous layers are screened" in invalid(
        rasters=[{"uri": "l.tif", "name": "l", "kind": "categorical", "screen": True}])
    assert "name: required" in invalid(rasters=[{"uri": "l.tif"}])
    assert "leave name out" in invalid(rasters=[{"uri": "g/*.tif", "name": "x"}])
    assert isinstance(ProspectSettings.model_validate(base).deposits, CellLayer)

    from minseg.geo.prospect import read_inputs

    settings = raster_config(root, rasters=[{"uri": f"{root}/none/*.tif"}]).prospect
    with pytest.raises(ProspectInputError, match=r"prospect.rasters\[0\].uri: .* matched no files"):
        read_inputs(settings, WORKING, Storage(), str(tmp_path), 0.25)
    empty = GridGeometry(350000.0, 7480000.0, 1000.0, 1000.0, 30, 30, 3067)
    write_geotiff(str(tmp_path / "empty.tif"), np.zeros((30, 30), np.uint8), empty)
    settings = raster_config(root, deposits={"raster": str(tmp_path / "empty.tif")}).prospect
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: .*empty.tif marks no cell"):
        read_inputs(settings, WORKING, Storage(), str(tmp_path), 0.25)
    clash = raster_config(root, lines=[{"uri": f"{root}/survey/faults.geojson", "name": "Au_idw"}]).prospect
    with pytest.raises(ProspectInputError, match=r"unique across samples, rasters and lines: Au_idw: "
                                                 r"prospect.rasters\[0\] \(.*Au_idw.tif\) and prospect.lines\[0\]"):
        read_inputs(clash, WORKING, Storage(), str(tmp_path), 0.25)
    twins = [{"uri": f"{root}/grids/*_idw.tif"}, {"uri": f"{root}/grids/Au_idw.tif", "name": "Au_idw"}]
    with pytest.raises(ProspectInputError, match="several layers named Au_idw"):
        read_inputs(raster_config(root, rasters=twins).prospect, WORKING, Storage(), str(tmp_path), 0.25)


def test_real_gtk_grids_and_iocg_raster(shared_data, ray_session, tmp_path):
    """Real data: element grids interpolated (IDW) from the real till table and written as GeoTIFFs, the real
    rock-class ArcInfo grid, the 24 real IOCG occurrences rasterised at 200 m: a raster-only run's phases screen the
    grids exactly as the samples' own interpolation would be screened."""
    import shapely
    from rasterio.features import rasterize

    from minseg.geo.config import IdwSettings, PointLayer, SampleTable
    from minseg.geo.idw import interpolate
    from minseg.geo.samples import read_samples
    from minseg.geo.screening import screen_elements
    from minseg.geo.vectors import read_points

    gtk = shared_data / "geochem-gtk"
    elements = {"Cu": "Cu_ppm_511", "Co": "Co_ppm_511", "Fe": "Fe_ppm_511", "Zr": "Zr_ppm_511"}
    samples = read_samples(SampleTable(uri=str(gtk / "till_geochem_IOCG_CLB.gpkg"), id="OBJECTID",
                                       elements=elements, flags={e: f"{e}_511P_T" for e in elements}),
                           WORKING, Storage(), 0.25)
    idw_grid = GridGeometry(346000.0, 7540000.0, 500.0, 500.0, 163, 135, 3067)  # the target grid below
    grids = {f"till_{element}": grid for element, grid in
             interpolate(samples.x, samples.y, samples.values, idw_grid, IdwSettings(), 0.25).items()}
    for name, grid in grids.items():
        write_geotiff(str(tmp_path / f"{name}.tif"), grid, idw_grid, nodata=float("nan"))
    iocg = read_points(PointLayer(uri=str(gtk / "IOCG.shp")), WORKING, Storage())
    fine = GridGeometry(340000.0, 7550000.0, 200.0, 200.0, 500, 400, 3067)
    from minseg.geo.grid import affine

    marked = rasterize(((p, 1) for p in shapely.points(iocg.x, iocg.y)), out_shape=(fine.rows, fine.cols), transform=affine(fine),
                       dtype="uint8")
    write_geotiff(str(tmp_path / "iocg.tif"), marked, fine)
    prospect = {
        "deposits": {"raster": str(tmp_path / "iocg.tif")},
        "rasters": [{"uri": str(tmp_path / "till_*.tif"), "screen": True},
                    {"uri": str(gtk / "rockclass200k"), "name": "rockclass", "kind": "categorical",
                     "crs": "EPSG:3067"}],
        "grid": {"crs": "EPSG:3067", "cell_m": 500, "extent": [346000, 7458500, 413500, 7540000]},
        "screening": {"critical_z": 1.0},
        "windows": {"size": 16, "stride": 8, "max_negatives": 200},
        "cv": {"folds": 2},
        "training": {"defaults": MEMBER, "members": [{"name": "m", "model_options": TINY}]},
    }
    config = MinsegConfig.model_validate({"run": {"name": "g", "output_uri": str(tmp_path / "out")},
                                          "prospect": prospect})
    inputs, evidence, windows, folds, trials = _phases(config)
    assert int(marked.sum()) == inputs.deposits.report["marked_cells"] >= 16  # one 200 m cell per occurrence
    assert 10 <= len(evidence.unique_cells) <= 16  # 16 occurrences in the till area, a few share a 500 m cell
    rows = {r["element"]: r for r in trials[None].screening}
    assert set(rows) == {"till_Co", "till_Cu", "till_Fe", "till_Zr"}
    assert all(r["auc"] is not None and r["level"] == "raster" for r in rows.values())
    # the same report as the samples' own IDW grids screened on the grid: equal AUC and Z_AUC, layer by layer
    expected = {r["element"]: r for r in screen_elements(grids, evidence.unique_cells, config.prospect.screening)}
    for name, row in rows.items():
        assert (row["auc"], row["z_auc"], row["positives"], row["negatives"], row["kept"]) == pytest.approx(
            (expected[name]["auc"], expected[name]["z_auc"], expected[name]["positives"],
             expected[name]["negatives"], expected[name]["kept"]), abs=2e-3), name
    assert any(c.startswith("rockclass=") for c in trials[None].channels)
    assert evidence.layer_reports["till_Cu"]["source_cell"] == [500.0, 500.0]
