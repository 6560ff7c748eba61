"""Evidence rasters on the target grid, categorical encoding, exact distance to lines; the real GTK grid."""

import numpy as np
import pytest

from minseg.geo.config import EvidenceRaster, LineLayer, ProspectInputError
from minseg.geo.crs import parse_crs
from minseg.geo.rasters import distance_to_lines, encode_categorical, read_raster_on_grid
from minseg.io.geotiff import GridGeometry, write_geotiff
from minseg.io.storage import Storage

WORKING = parse_crs("EPSG:3067", "test")


def test_same_grid_is_exact_and_a_shifted_grid_moves_by_whole_cells(tmp_path):
    source = GridGeometry(1000.0, 5000.0, 100.0, 100.0, 20, 30, 3067)
    values = np.arange(600, dtype=np.float32).reshape(20, 30)
    write_geotiff(str(tmp_path / "v.tif"), values, source)
    settings = EvidenceRaster(uri=str(tmp_path / "v.tif"), name="v", resampling="nearest")
    same, report = read_raster_on_grid(settings, 0, source, WORKING, Storage())
    np.testing.assert_array_equal(same, values)
    shifted = GridGeometry(1100.0, 4900.0, 100.0, 100.0, 20, 30, 3067)  # one cell right, one down
    moved, report = read_raster_on_grid(settings, 0, shifted, WORKING, Storage())
    np.testing.assert_array_equal(moved[:-1, :-1], values[1:, 1:])
    assert np.isnan(moved[-1]).all() and report["covered_fraction"] < 1


def test_categorical_layers_refuse_interpolation_and_encode_one_hot():
    with pytest.raises(ProspectInputError, match="categorical layer must be resampled with 'nearest'"):
        read_raster_on_grid(EvidenceRaster(uri="x.tif", name="l", kind="categorical", resampling="bilinear"), 0,
                            GridGeometry(0, 1, 1, 1, 1, 1, 3067), WORKING, Storage())
    values = np.array([[1, 1, 2], [3, 1, np.nan]])
    channels, report = encode_categorical(values, EvidenceRaster(uri="x", name="rock", kind="categorical",
                                                                 max_classes=1))
    names = [n for n, _ in channels]
    assert names == ["rock=1", "rock=other"] and report["classes"] == 3
    np.testing.assert_array_equal(channels[0][1][0], [1, 1, 0])
    np.testing.assert_array_equal(channels[1][1][1, :2], [1, 0])
    assert np.isnan(channels[0][1][1, 2])
    # class codes stored as floats: whole numbers are codes; 1.2 and 1.7 would both become class 1
    layer = EvidenceRaster(uri="x", name="rock", kind="categorical")
    channels, _ = encode_categorical(values.astype(np.float32), layer)
    assert [n for n, _ in channels] == ["rock=1", "rock=2", "rock=3"]
    fractional = np.array([[1.2, 1.7, 2.0], [np.nan, 2.0, 1.2]])
    with pytest.raises(ProspectInputError, match=r"raster 'rock' \(x\): declared kind: categorical, but 3 of its "
                                                 r"cells .* \(1\.2, 1\.7, \.\.\.\): class codes must be integers"):
        encode_categorical(fractional, layer)


def test_distance_to_a_line_is_exact_from_pixel_centres(ray_session):
    geometry = GridGeometry(0.0, 1000.0, 100.0, 100.0, 10, 10, 3067)
    line = np.array([[-500.0, 420.0], [1500.0, 420.0]])  # horizontal at y = 420
    distance = distance_to_lines([line], geometry, LineLayer(uri="x"), block=4, task_cpus=0.25)
    _, ys = geometry.pixel_centres()
    np.testing.assert_allclose(distance, np.repeat(np.abs(ys - 420.0)[:, None], 10, axis=1), rtol=1e-6)
    clipped = distance_to_lines([line], geometry, LineLayer(uri="x", max_distance_m=200), block=4, task_cpus=0.25)
    assert clipped.max() == 200.0


def test_real_arcinfo_lithology_grid(shared_data):
    grid = shared_data / "geochem-gtk" / "lithoname200k"
    geometry = GridGeometry(346000.0, 7540000.0, 500.0, 500.0, 160, 134, 3067)
    with pytest.raises(ProspectInputError, match=r"prospect.rasters\[0\].crs"):
        read_raster_on_grid(EvidenceRaster(uri=str(grid), name="lithology", kind="categorical"), 0, geometry,
                            WORKING, Storage())
    values, report = read_raster_on_grid(
        EvidenceRaster(uri=str(grid), name="lithology", kind="categorical", crs="EPSG:3067"), 0, geometry,
        WORKING, Storage())
    assert report["driver"] == "AIG" and report["source_cell"] == [500.0, 500.0]
    codes = np.unique(values[np.isfinite(values)])
    assert len(codes) > 5 and (codes == np.round(codes)).all() and codes.max() < 255  # class ids, never averaged


def test_geotiffs_on_s3_read_back_by_gdal_with_crs_and_transform(s3, tmp_path):
    """Outputs go through Storage to s3://; GDAL (not only our reader) sees the CRS, transform and nodata."""
    import rasterio

    storage = s3.storage()
    geometry = GridGeometry(350000.0, 7480000.0, 250.0, 250.0, 12, 9, 3067)
    values = np.linspace(0, 1, 108, dtype=np.float32).reshape(12, 9)
    values[0, 0] = np.nan
    write_geotiff(s3.uri("maps/prospectivity.tif"), values, geometry, nodata=float("nan"), storage=storage)
    local = tmp_path / "p.tif"
    local.write_bytes(storage.read_bytes(s3.uri("maps/prospectivity.tif")))
    with rasterio.open(local) as source:
        assert source.crs.to_epsg() == 3067
        assert tuple(source.transform)[:6] == (250.0, 0.0, 350000.0, 0.0, -250.0, 7480000.0)
        assert np.isnan(source.nodata)
        np.testing.assert_array_equal(source.read(1)[1:], values[1:])


def test_arcinfo_grid_folder_on_s3(s3, shared_data):
    """An ESRI grid is a folder: on S3 it is a prefix, fetched whole before GDAL opens it."""
    storage = s3.storage()
    for path in (shared_data / "geochem-gtk" / "rockclass200k").iterdir():
        storage.upload_file(str(path), s3.uri(f"grids/rockclass200k/{path.name}"))
    geometry = GridGeometry(346000.0, 7540000.0, 500.0, 500.0, 20, 20, 3067)
    settings = EvidenceRaster(uri=s3.uri("grids/rockclass200k"), name="rock", kind="categorical", crs="EPSG:3067")
    values, report = read_raster_on_grid(settings, 0, geometry, WORKING, storage)
    assert report["driver"] == "AIG" and np.isfinite(values).any()
    with pytest.raises(ProspectInputError, match="no such file, folder or prefix"):
        read_raster_on_grid(settings.model_copy(update={"uri": s3.uri("grids/none")}), 0, geometry, WORKING, storage)


def _write(path, values, geometry, **profile_extra):
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "height": values.shape[-2], "width": values.shape[-1], "crs": "EPSG:3067",
               "count": 1 if values.ndim == 2 else values.shape[0], "dtype": values.dtype.name,
               "transform": from_origin(geometry.x0, geometry.y0, geometry.pixel_width, geometry.pixel_height),
               **profile_extra}
    return rasterio.open(path, "w", **profile)


def test_masked_cells_are_missing_however_validity_is_encoded(tmp_path):
    """The issue's case: a float32 layer with an internal mask band and no nodata (masked cells used to be 0);
    a second encoding: an alpha band; the report counts each layer's missing cells."""
    import rasterio

    geometry = GridGeometry(1000.0, 5000.0, 100.0, 100.0, 20, 30, 3067)
    values = np.arange(1, 601, dtype=np.float32).reshape(20, 30)
    invalid = np.zeros((20, 30), bool)
    invalid[5:9, 10:20] = True  # 40 cells
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with _write(tmp_path / "masked.tif", np.where(invalid, 0, values), geometry) as dst:
            dst.write(np.where(invalid, 0, values).astype(np.float32), 1)
            dst.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
    read, report = read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "masked.tif"), name="m", resampling="nearest"),
                                       0, geometry, WORKING, Storage())
    assert np.isnan(read[invalid]).all() and np.array_equal(read[~invalid], values[~invalid])
    assert report["validity_from"] == "mask band" and report["missing_source_cells"] == 40

    stacked = np.stack([values, np.where(invalid, 0, 255).astype(np.float32)])
    with _write(tmp_path / "alpha.tif", stacked, geometry, photometric="minisblack", alpha="YES") as dst:
        dst.write(stacked)
        dst.colorinterp = [rasterio.enums.ColorInterp.gray, rasterio.enums.ColorInterp.alpha]
    read, report = read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "alpha.tif"), name="a", resampling="nearest"),
                                       0, geometry, WORKING, Storage())
    assert np.isnan(read[invalid]).all() and report["validity_from"] == "alpha band"
    assert report["missing_grid_cells"] == 40


def test_a_configured_nodata_replaces_the_files(tmp_path):
    """A lithology grid whose file says nodata = 0 while 0 is a real class: `nodata: -9999` in the config wins."""
    geometry = GridGeometry(1000.0, 5000.0, 100.0, 100.0, 4, 5, 3067)
    codes = np.array([[0, 1, 2, 0, -9999]] * 4, np.float32)
    with _write(tmp_path / "litho.tif", codes, geometry, nodata=0) as dst:
        dst.write(codes, 1)
    read, report = read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "litho.tif"), name="l", kind="categorical",
                                                      nodata=-9999), 0, geometry, WORKING, Storage())
    assert (read[:, 0] == 0).all() and np.isnan(read[:, 4]).all()
    assert report["validity_from"] == "nodata value from the config" and report["missing_source_cells"] == 4
    read, _ = read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "litho.tif"), name="l", kind="categorical"), 0,
                                  geometry, WORKING, Storage())
    assert np.isnan(read[:, 0]).all()  # without it, the file's nodata applies


def test_an_external_mask_travels_with_a_raster_on_s3(s3, tmp_path):
    """GDAL keeps an external mask in `x.tif.msk`: fetched with the raster from S3, so its masked cells are
    missing there too (they were 'every cell valid' before)."""
    import rasterio

    geometry = GridGeometry(1000.0, 5000.0, 100.0, 100.0, 10, 12, 3067)
    values = np.arange(1, 121, dtype=np.float32).reshape(10, 12)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False):
        with _write(tmp_path / "ext.tif", values, geometry) as dst:
            dst.write(values, 1)
            mask = np.full((10, 12), 255, np.uint8)
            mask[:3] = 0
            dst.write_mask(mask)
    assert (tmp_path / "ext.tif.msk").exists()
    storage = s3.storage()
    for name in ("ext.tif", "ext.tif.msk"):
        storage.upload_file(str(tmp_path / name), s3.uri(f"rasters/{name}"))
    read, report = read_raster_on_grid(EvidenceRaster(uri=s3.uri("rasters/ext.tif"), name="e", resampling="nearest"),
                                       0, geometry, WORKING, storage)
    assert np.isnan(read[:3]).all() and np.isfinite(read[3:]).all() and report["validity_from"] == "mask band"


def test_what_was_resampled_is_said_and_a_layer_covering_little_of_the_study_area_is_refused(tmp_path, caplog):
    """A layer on another cell size: one log line (source grid, cells, method, coverage) and the same in the
    report; one covering a corner of the study area only is refused, naming the layer, its share and the key."""
    import logging

    target = GridGeometry(0.0, 4000.0, 100.0, 100.0, 40, 40, 3067)
    coarse = GridGeometry(0.0, 4000.0, 250.0, 250.0, 16, 16, 3067)  # the whole area, 250 m cells
    write_geotiff(str(tmp_path / "coarse.tif"), np.arange(256, dtype=np.float32).reshape(16, 16), coarse)
    corner = GridGeometry(0.0, 4000.0, 100.0, 100.0, 10, 10, 3067)  # 1/16 of the area
    write_geotiff(str(tmp_path / "corner.tif"), np.ones((10, 10), np.float32), corner)
    study = np.ones((40, 40), bool)
    with caplog.at_level(logging.INFO, logger="minseg.geo.rasters"):
        values, report = read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "coarse.tif"), name="cu_idw"), 0,
                                             target, WORKING, Storage(), study, 0.5)
    assert report["source_cell"] == [250.0, 250.0] and report["resampling"] == "bilinear"
    assert report["study_covered_fraction"] == 1.0
    (fields,) = [r.fields for r in caplog.records if r.getMessage() == "prospect.layer_resampled"]
    assert fields["layer"] == "cu_idw" and fields["source"] == "16x16" and fields["source_cell"] == "250x250"
    assert fields["target_cell"] == "100x100" and fields["method"] == "bilinear" and fields["study_covered"] == 1.0
    with pytest.raises(ProspectInputError, match=r"prospect.rasters\[1\] \(granite\): .*corner.tif covers 6.2% of "
                                                 r"the study area, less than prospect.grid.min_layer_coverage \(50%\)"):
        read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "corner.tif"), name="granite"), 1, target, WORKING,
                            Storage(), study, 0.5)
    assert not [r for r in caplog.records if r.getMessage() == "prospect.layer_narrows_study"]  # all covered: silent
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minseg.geo.rasters"):  # allowed, yet it shrinks the map: a warning
        assert read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "corner.tif"), name="granite"), 1, target,
                                   WORKING, Storage(), study, 0.05)[1]["study_covered_fraction"] == 0.0625
    (warned,) = [r for r in caplog.records if r.getMessage() == "prospect.layer_narrows_study"]
    assert warned.levelno == logging.WARNING and warned.fields["layer"] == "granite"
    assert warned.fields["study_covered"] == 0.0625 and "keeps only the 6% of its cells" in warned.fields["hint"]


def test_a_raster_glob_leaves_gdal_side_files_out(tmp_path):
    """mag.tif.ovr (overviews GDAL also opens), .aux.xml and world files beside the rasters are no layers."""
    from minseg.geo.rasters import expand_rasters

    for name in ("mag.tif", "mag.tif.ovr", "mag.tif.aux.xml", "grav.tif", "grav.tfw"):
        (tmp_path / name).write_bytes(b"x")
    layers = expand_rasters([EvidenceRaster(uri=f"{tmp_path}/*")], Storage())
    assert sorted(layer.name for _, layer in layers) == ["grav", "mag"]


def test_a_raster_with_no_valid_cell_is_said_so_not_blamed_on_its_crs(tmp_path):
    """Every cell nodata was reported as "does not overlap the target grid; check its CRS"."""
    grid = GridGeometry(1000.0, 5000.0, 100.0, 100.0, 20, 30, 3067)
    write_geotiff(str(tmp_path / "empty.tif"), np.full((20, 30), -1, np.float32), grid, nodata=-1.0)
    settings = EvidenceRaster(uri=str(tmp_path / "empty.tif"), name="lith", kind="categorical")
    with pytest.raises(ProspectInputError, match=r"prospect.rasters\[0\]: \S+empty.tif has no valid cell \(every cell "
                                                 r"is nodata or masked: nodata value\)"):
        read_raster_on_grid(settings, 0, grid, WORKING, Storage())
    write_geotiff(str(tmp_path / "far.tif"), np.ones((20, 30), np.float32), GridGeometry(901000.0, 5000.0, 100.0, 100.0,
                                                                                       20, 30, 3067))
    with pytest.raises(ProspectInputError, match=r"far.tif does not overlap the target grid \(bounds .*; the raster's: "
                                                 r"\(901000.0, 3000.0, 904000.0, 5000.0\) in .*TM35FIN.*\); check its "
                                                 r"CRS"):
        read_raster_on_grid(EvidenceRaster(uri=str(tmp_path / "far.tif"), name="far"), 0, grid, WORKING, Storage())


def test_a_raster_glob_over_the_output_leaves_an_earlier_run_s_maps_out(tmp_path, caplog):
    """``data/**/*.tif`` with the output ``data/prospect``: the rerun took the last run's prospectivity,
    uncertainty and evidence rasters as layers. Left out (said), once the folder is a prospect output; a raster
    of the user's at its top is kept; so are sample tables, the same way."""
    import logging

    from minseg.geo.rasters import expand_rasters
    from minseg.geo.samples import resolve_tables

    out = tmp_path / "prospect"
    for name in ("mag.tif", "prospect/prospectivity.tif", "prospect/uncertainty.tif", "prospect/evidence/Au.tif",
                 "prospect/cv/fold1/prospectivity.tif", "prospect/grav.tif", "till.csv", "prospect/targets.csv",
                 "prospect/inputs/sample_problems.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    pattern = EvidenceRaster(uri=f"{tmp_path}/**/*.tif")
    with pytest.raises(ProspectInputError, match="several layers named prospectivity"):  # not yet an output: all
        expand_rasters([pattern], Storage(), str(out))
    (out / ".minseg-prospect").write_text("{}")
    with caplog.at_level(logging.INFO, logger="minseg"):
        layers = expand_rasters([pattern], Storage(), str(out))
        tables = resolve_tables(f"{tmp_path}/**/*.csv", Storage(), str(out))
    assert sorted(layer.name for _, layer in layers) == ["grav", "mag"]
    assert tables == [str(tmp_path / "till.csv")]
    said = [r.fields for r in caplog.records if r.getMessage() == "prospect.glob_output_left_out"]
    assert [(f["key"], f["left_out"]) for f in said] == [("prospect.rasters[0].uri", 4),
                                                         ("prospect.samples.uri", 2)]
