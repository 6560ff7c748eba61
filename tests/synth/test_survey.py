import json

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from minseg.synth.config import SurveySynth
from minseg.io.geotiff import GridGeometry, read_geotiff, write_geotiff
from minseg.synth.survey import ELEMENTS, generate_survey, write_survey

SMALL = SurveySynth(n_samples=600, width_m=30_000, height_m=20_000, cell_m=500, n_deposits=8, n_faults=10)


@pytest.fixture(scope="module")
def survey_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    write_survey(str(out), SMALL, seed=3)
    return out


def test_files_and_paper_elements(survey_dir):
    names = sorted(p.name for p in survey_dir.iterdir())
    assert names == [
        "deposits.csv", "deposits.geojson", "faults.geojson", "lithology.tif",
        "samples.csv", "samples.parquet", "survey.json",
    ]
    assert list(ELEMENTS) == ["Ag", "Au", "B", "Sn", "Cu", "Ba", "Mn", "Pb", "Zn", "As", "Sb", "Hg", "Mo", "W", "Bi", "F"]
    meta = json.loads((survey_dir / "survey.json").read_text())
    assert meta["elements"]["Au"]["unit"] == "ng/g" and meta["elements"]["Cu"]["unit"] == "ug/g"


def test_csv_has_censored_text_and_missing_values(survey_dir):
    table = pacsv.read_csv(survey_dir / "samples.csv", convert_options=pacsv.ConvertOptions(
        column_types={e: "string" for e in ELEMENTS}, strings_can_be_null=True)).to_pandas()
    assert len(table) == 600
    au = table["Au"]
    censored = au.dropna().str.startswith("<")
    assert 0.05 < censored.mean() < 0.6
    limit = float(au[au.str.startswith("<", na=False)].iloc[0][1:])
    numeric = au[~au.str.startswith("<", na=True)].astype(float)
    assert (numeric >= limit).all()  # only values under the limit are censored
    assert table[list(ELEMENTS)].isna().to_numpy().any()


def test_parquet_flags_match_csv(survey_dir):
    numeric = pq.read_table(survey_dir / "samples.parquet").to_pandas()
    text = pacsv.read_csv(survey_dir / "samples.csv", convert_options=pacsv.ConvertOptions(
        column_types={e: "string" for e in ELEMENTS}, strings_can_be_null=True)).to_pandas()
    for element in ("Au", "Hg", "Cu"):
        flagged = numeric[f"{element}_T"] == "<"
        assert (flagged == text[element].str.startswith("<", na=False)).all()
        assert (numeric[element].isna() == text[element].isna()).all()


def test_lithology_geotiff_georeferenced(survey_dir):
    array, geometry, nodata = read_geotiff(str(survey_dir / "lithology.tif"))
    assert geometry.epsg == 3067
    assert (geometry.rows, geometry.cols) == array.shape == (40, 60)
    assert geometry.bounds == (350_000.0, 7_450_000.0, 380_000.0, 7_470_000.0)
    assert set(np.unique(array)) <= set(range(1, SMALL.n_rock_units + 1))
    assert nodata == 0


def test_deposits_inside_and_halo_signal():
    survey = generate_survey(SMALL, seed=3)
    gold = np.array([[d["x"], d["y"]] for d in survey["deposits"] if d["type"] == "orogenic-Au"])
    xy = survey["sample_xy"]
    xmin, ymin, xmax, ymax = survey["geometry"].bounds
    assert ((gold[:, 0] > xmin) & (gold[:, 0] < xmax) & (gold[:, 1] > ymin) & (gold[:, 1] < ymax)).all()
    distance = np.min(np.hypot(xy[:, None, 0] - gold[:, 0], xy[:, None, 1] - gold[:, 1]), axis=1)
    au = survey["values"]["Au"]
    assert np.median(au[distance < 1500]) > 3 * np.median(au[distance > 6000])
    assert "Au" in json.dumps(survey["metadata"]["halo_elements"])


def test_deterministic(tmp_path):
    write_survey(str(tmp_path / "a"), SMALL, seed=8)
    write_survey(str(tmp_path / "b"), SMALL, seed=8)
    for name in ("samples.csv", "faults.geojson", "deposits.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_geotiff_roundtrip_geographic_and_errors(tmp_path):
    geometry = GridGeometry(20.0, 70.0, 0.01, 0.01, 5, 7, 4326)
    data = np.arange(35, dtype=np.float32).reshape(5, 7)
    write_geotiff(str(tmp_path / "g.tif"), data, geometry, nodata=-9999.5)
    array, back, nodata = read_geotiff(str(tmp_path / "g.tif"))
    assert np.array_equal(array, data) and back == geometry and nodata == -9999.5
    with pytest.raises(ValueError, match="does not match the grid"):
        write_geotiff(str(tmp_path / "bad.tif"), data.T, geometry)
    with pytest.raises(ValueError, match="not a GeoTIFF"):
        import tifffile

        tifffile.imwrite(tmp_path / "plain.tif", data)
        read_geotiff(str(tmp_path / "plain.tif"))


def test_one_rock_unit_works_and_the_config_bounds_the_rest(tmp_path):
    """One unit was an IndexError (units 1 and 2 host the deposits); the raster is uint8 with 0 as nodata."""
    from pydantic import ValidationError

    survey = generate_survey(SMALL.model_copy(update={"n_rock_units": 1}), seed=3)
    assert set(np.unique(survey["lithology"])) == {1}
    assert survey["metadata"]["favourable_units"] == ["unit-1"]
    assert {d["unit"] for d in survey["deposits"]} == {"unit-1"}
    for bad, message in ((0, "greater than or equal to 1"), (256, "less than or equal to 255")):
        with pytest.raises(ValidationError, match=message):
            SurveySynth(n_rock_units=bad)


def test_a_crs_proj_does_not_know_or_without_an_epsg_code_is_a_config_error(tmp_path, capsys):
    """Was a ValueError traceback (exit 1) from the GeoTIFF writer."""
    from minseg.cli import main

    for crs, message in (("EPSG:99999", "not a CRS that PROJ knows (crs not found: EPSG:99999)"),
                         ("+proj=tmerc +lon_0=27 +ellps=GRS80", "a CRS without an EPSG code")):
        assert main(["synth", "survey", "--out", str(tmp_path), "--set", f"synth.survey.crs={crs}"]) == 2
        err = capsys.readouterr().err
        assert f"synth.survey.crs: {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_survey_whose_map_metres_are_not_ground_metres_is_a_config_error(tmp_path, capsys):
    """Web Mercator at the default origin (about 56° N) passed, and wrote a survey `minseg prospect` then refused:
    its cells are 1.8 times longer on the map than on the ground. Near the equator the same CRS is fine."""
    from minseg.cli import main

    for crs in ("EPSG:3857", "EPSG:3395"):  # Web Mercator, World Mercator
        assert main(["synth", "survey", "--out", str(tmp_path), "--set", f"synth.survey.crs={crs}"]) == 2
        err = capsys.readouterr().err
        assert f"synth.survey: crs {crs}: its projection's scale at the grid's centre" in err, err
        assert "use the area's UTM zone" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert SurveySynth(crs="EPSG:3857", origin_x=0, origin_y=0).crs == "EPSG:3857"


@pytest.mark.parametrize("section, values, said", [
    ("slide", {"height": 10_000_000, "width": 10_000_000}, "synth.slide.height: Input should be less than or equal to "
                                                           "200000"),
    ("sections", {"width": 100_000}, "synth.sections.width: Input should be less than or equal to 20000"),
    ("survey", {"width_m": 1e7, "height_m": 1e7, "cell_m": 10}, "lithology raster of 1e+12 cells, above 1e+08"),
])
def test_sizes_no_generator_should_start_on_are_refused_when_read(tmp_path, capsys, section, values, said):
    """A 10^14-pixel slide ran for minutes into a full disk, leaving temporary files: refused when read."""
    from minseg.cli import main

    args = [arg for key, value in values.items() for arg in ("--set", f"synth.{section}.{key}={value}")]
    assert main(["synth", section, "--out", str(tmp_path / "s"), *args]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
