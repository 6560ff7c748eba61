"""A slide's mineralogy from blocks streamed in any order: its document and per-object tables equal the whole
map's, measured independently; tallies add up over slides; the figures are drawn."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from minseg.io.storage import Storage
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.liberation import accumulate
from minseg.mineralogy.plots import write_plots
from minseg.mineralogy.sizes import size_fraction
from minseg.mineralogy.slide import (MeasureSpec, ObjectTables, SlideMineralogy, Tally, measure_block,
                                     mineralogy_document)
from tests.mineralogy.test_components import blob_labels

NAMES = ("resin", "pyrite", "chalcopyrite", "gangue")


def measured(labels, block, spec, folder=None, seed=0):
    height, width = labels.shape
    tables = None
    if folder is not None:
        tables = ObjectTables(spec, height, width, str(folder / "grains.parquet"), str(folder / "particles.parquet"))
    slide = SlideMineralogy(spec, height, width, tables)
    positions = [(t, l) for t in range(0, height, block) for l in range(0, width, block)]
    for index in np.random.default_rng(seed).permutation(len(positions)):
        top, left = positions[index]
        slide.add(measure_block(labels[top : top + block, left : left + block], top, left, spec))
    return slide.finish()


def without_tables(document):
    return {k: v for k, v in document.items() if k != "tables"}


@pytest.mark.parametrize("connectivity", [4, 8])
def test_blocks_in_any_order_give_the_whole_map_document(connectivity):
    labels = blob_labels((70, 90), 4, seed=connectivity)
    spec = MeasureSpec(NAMES, MineralogySettings(connectivity=connectivity, size_fractions=[3.0, 8.0]), 2.0)
    whole = measured(labels, 1000, spec)
    for block, seed in ((16, 1), (7, 2), (33, 3)):
        assert without_tables(measured(labels, block, spec, seed=seed)) == without_tables(whole), block


def test_tables_and_liberation_by_size_equal_the_whole_map(tmp_path):
    """Each particle row's composition, geometry in µm and edge flag against ndimage on the whole map; the
    liberation per size fraction against the particles classed one by one."""
    labels = blob_labels((64, 80), 4, seed=11)
    labels[20, :] = 0
    size = 1.5
    settings = MineralogySettings(size_fractions=[6.0, 15.0], min_grain_px=3)
    spec = MeasureSpec(NAMES, settings, size)
    document = measured(labels, 16, spec, tmp_path, seed=4)
    particles = pq.read_table(tmp_path / "particles.parquet").to_pandas()
    grains = pq.read_table(tmp_path / "grains.parquet").to_pandas()
    sample = spec.sample
    ids, count = ndimage.label(sample[labels], structure=np.ones((3, 3)))
    composition = np.stack([np.bincount(labels[ids == i], minlength=4) for i in range(1, count + 1)])
    area = composition.sum(axis=1)
    real = area >= 3
    expected = {tuple(c[1:]) for c in composition[real]}
    assert {tuple(r) for r in particles[[f"px:{n}" for n in NAMES[1:]]].to_numpy()} == expected
    assert len(particles) == real.sum() == document["particles"]["count"]
    assert document["tables"]["rows"] == {"grains": len(grains), "particles": len(particles)}
    assert np.allclose(particles["area_um2"], particles["area_px"] * size**2)
    assert np.allclose(particles["perimeter_um"], particles["perimeter_px"] * size)
    assert np.allclose(particles["ecd_um"], 2 * np.sqrt(particles["area_um2"] / np.pi))
    boxes = ndimage.find_objects(ids)
    cut = {i for i, b in enumerate(boxes) if b[0].start == 0 or b[1].start == 0 or b[0].stop == 64
           or b[1].stop == 80}
    assert particles["touching_edge"].sum() == sum(1 for i in cut if real[i]) == document["particles"]["touching_edge"]
    assert sorted(particles["particle_id"]) == list(range(len(particles)))
    # liberation by size fraction: every real particle classed by its ECD alone
    fraction = size_fraction(area[real], (6.0, 15.0), size)
    labels_of = document["size_fractions"]
    assert labels_of == ["-6 µm", "+6-15 µm", "+15 µm"]
    for f, label in enumerate(labels_of):
        table = accumulate(composition[real][fraction == f], sample)
        entry = document["liberation_by_size"][label]
        assert entry["particles"] == int((fraction == f).sum())
        for m, name in enumerate(NAMES):
            if sample[m]:
                assert entry["liberation"][name]["pixels"] == int(table[m].sum())
    # grains: one row per grain of at least 3 px, classes by name, summed perimeter = the class's boundary
    for m, name in enumerate(NAMES):
        grain_ids, grain_count = ndimage.label(labels == m, structure=np.ones((3, 3)))
        sizes = np.bincount(grain_ids.ravel())[1:]
        assert (grains["class"] == name).sum() == (sizes >= 3).sum()
    pyrite = grains[grains["class"] == "pyrite"]
    small = document["grains"]["pyrite"]["noise_components"]
    if not small:
        assert pyrite["perimeter_px"].sum() == document["association"]["pyrite"]["boundary_px"]


def test_tallies_add_up_over_slides_and_plots_are_drawn(tmp_path):
    spec = MeasureSpec(NAMES, MineralogySettings(), None)
    first, second = blob_labels((40, 40), 4, seed=1), blob_labels((40, 40), 4, seed=2)
    a, b = measured(first, 16, spec), measured(second, 16, spec)
    batch = mineralogy_document(Tally.from_json(a["tally"]) + Tally.from_json(b["tally"]), spec)
    pixels = {n: a["modal_mineralogy"][n]["pixels"] + b["modal_mineralogy"][n]["pixels"] for n in NAMES}
    assert {n: batch["modal_mineralogy"][n]["pixels"] for n in NAMES} == pixels
    assert batch["particles"]["count"] == a["particles"]["count"] + b["particles"]["count"]
    assert batch["particles"]["size"]["binned"] is True and batch["particles"]["size"]["unit"] == "px"
    json.dumps(batch)  # a plain JSON document
    batch["colours"] = [[0, 0, 0], [220, 200, 40], [200, 120, 30], [120, 120, 120]]
    written = write_plots(batch, Storage(), str(tmp_path), "batch")
    assert written == ["size_distribution.png", "liberation.png", "association.png"]
    assert all((tmp_path / name).stat().st_size > 5000 for name in written)


def test_a_batch_sums_only_slides_measured_alike():
    """Tallies count pixels: a slide at another pixel size (or other settings) is named, not summed."""
    from minseg.mineralogy.report import batch_document

    labels = blob_labels((40, 40), 4, seed=1)
    one = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    two = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    other = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 0.5))
    quiet = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(plots=False, tables=False), 1.0))
    document, summed, left_out = batch_document({"a": one, "b": two, "c": other, "d": quiet})
    assert summed == ["a", "b", "d"] and left_out == ["c"] and document["left_out"] == ["c"]
    assert document["modal_mineralogy"]["pyrite"]["pixels"] == 3 * one["modal_mineralogy"]["pyrite"]["pixels"]


def test_no_background_class_means_no_particles(tmp_path):
    spec = MeasureSpec(("pyrite", "gangue"), MineralogySettings(), 1.0)
    labels = blob_labels((30, 30), 2, seed=3)
    tables = ObjectTables(spec, 30, 30, str(tmp_path / "g.parquet"), None)
    slide = SlideMineralogy(spec, 30, 30, tables)
    slide.add(measure_block(labels, 0, 0, spec))
    document = slide.finish()
    assert document["particles"] is None and document["liberation"] is None
    assert document["tables"]["rows"]["grains"] == pq.read_table(tmp_path / "g.parquet").num_rows > 0
    assert not (tmp_path / "particles.parquet").exists()


def test_a_slide_of_resin_only_has_no_particles_and_empty_tables(tmp_path):
    """Blocks without a single object touching a seam (and a slide with no sample at all) still finish."""
    spec = MeasureSpec(NAMES, MineralogySettings(), 1.0)
    labels = np.zeros((40, 40), np.uint8)
    document = measured(labels, 16, spec, tmp_path)
    assert document["particles"]["count"] == 0 and document["particles"]["size"]["mass"]["p80"] is None
    assert pq.read_table(tmp_path / "particles.parquet").num_rows == 0
    # no sample pixel: no share of the sample (None, not 0 %), in the document and the slides table's columns
    assert {e.get("sample_area_percent") for e in document["modal_mineralogy"].values()} == {None}
    from minseg.mineralogy.report import headline

    assert not any(key.startswith("sample_area_pct:") for key in headline(document))
    labels[5:9, 5:9] = 1  # one particle inside one block: nothing crosses a seam
    document = measured(labels, 16, spec, tmp_path)
    assert document["particles"]["count"] == 1 and document["liberation"]["pyrite"]["liberated_pct"] == 100.0
    assert write_plots(document, Storage(), str(tmp_path), "one grain")[0] == "size_distribution.png"


def test_background_and_densities_match_class_names_in_any_case():
    """A mask's ``Background`` class was a mineral (75 % of the "sample", no particles, every weight % null) and
    ``Pyrite`` had no density: class names are matched to background_classes and the density table ignoring case
    (a break-it pass found it); an entry spelt as the class wins."""
    from minseg.mineralogy.report import headline_text

    labels = blob_labels((40, 40), 4, seed=1)
    lower = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    upper = measured(labels, 16, MeasureSpec(("Resin", "Pyrite", "CHALCOPYRITE", "Gangue"), MineralogySettings(), 1.0))
    assert upper["background_classes"] == ["Resin"] and upper["densities_missing"] == []
    assert [entry.get("weight_percent") for entry in upper["modal_mineralogy"].values()] == [
        entry.get("weight_percent") for entry in lower["modal_mineralogy"].values()]
    assert upper["particles"]["count"] == lower["particles"]["count"] > 0
    own = MeasureSpec(("Resin", "Pyrite"), MineralogySettings(densities={"Pyrite": 4.8}), 1.0)
    assert own.densities["Pyrite"] == 4.8 and own.background == {"Resin"}
    # the user's density in another case than the class still beats the built-in one (5.01 for pyrite)
    assert MeasureSpec(("resin", "pyrite"), MineralogySettings(densities={"Pyrite": 5.2}), 1.0).densities[
        "pyrite"] == 5.2
    MineralogySettings(densities={"pyrite": 4.8}).check_class_names(["Resin", "Pyrite"])  # not "unknown class"
    main = [line for line in headline_text(upper) if line.startswith("liberation of ")]
    assert main and main[0].split()[2].rstrip(":") in ("Pyrite", "CHALCOPYRITE")  # the main sulphide, not the gangue
    # a mineral without a density is said on the console, not only in the JSON
    odd = measured(labels, 16, MeasureSpec(("resin", "pyrite", "unobtainium", "gangue"), MineralogySettings(), 1.0))
    assert "no weight % (nor particle sizes by mass): no density for unobtainium; set mineralogy.densities" in (
        "\n".join(headline_text(odd)))


def test_a_mineral_absent_from_particles_has_no_liberation(tmp_path):
    """Liberation of a mineral with no area in particles was 0.0 % ("all locked"), in slides.csv and batch means
    too: it is None, as every class and yield percentage of it."""
    from minseg.mineralogy.report import headline, headline_text

    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 5:15] = 1  # pyrite only: chalcopyrite and gangue are absent
    document = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    absent = document["liberation"]["chalcopyrite"]
    assert absent["pixels"] == 0 and absent["liberated_pct"] is None
    assert set(absent["yield_pct"].values()) == {None} and set(absent["classes_pct"].values()) == {None}
    assert document["liberation"]["pyrite"]["liberated_pct"] == 100.0
    assert headline(document)["liberated_pct:gangue"] is None
    assert write_plots(document, Storage(), str(tmp_path), "pyrite only")  # the absent ones are not drawn
    assert "liberation of pyrite: 100.0 %" in "\n".join(headline_text(document))


def test_headline_gives_the_sample_area_percent_beside_the_image_one():
    """``area_pct:`` is of the whole image (resin included) while ``wt_pct:`` is of the sample: the sample-basis
    area % (the Delesse modal figure) was in no slides table. ``sample_area_pct:`` gives it, for sample classes."""
    from minseg.mineralogy.report import headline

    labels = np.zeros((40, 40), np.uint8)
    labels[0:20, 0:20] = 3  # gangue 400 px
    labels[5:15, 5:15] = 1  # pyrite 100 px inside it: 300 gangue; resin 1200 px
    row = headline(measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0)))
    assert row["area_pct:pyrite"] == 6.25 and row["sample_area_pct:pyrite"] == 25.0
    assert row["area_pct:gangue"] == 18.75 and row["sample_area_pct:gangue"] == 75.0
    assert row["sample_area_pct:chalcopyrite"] == 0.0 and "sample_area_pct:resin" not in row
    assert row["area_pct:resin"] == 75.0  # kept as it was: scripts read it
    assert row["wt_pct:pyrite"] == pytest.approx(100 * 100 * 5.01 / (100 * 5.01 + 300 * 2.65), abs=1e-4)
    # the batch report's slide table is on the sample's basis too, as its batch tables
    from minseg.mineralogy.report import markdown

    document = measured(labels, 16, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    report = markdown(document | {"slides": ["s1"], "left_out": []}, {"s1": row}, "t", [])
    table = report[report.index("## Slides (area % of the sample"):]
    assert "| sample_area_pct:gangue | sample_area_pct:pyrite |" in table and "| s1 | 75.00 | 25.00 |" in table
    assert "area_pct:resin" not in table


def test_a_mineral_without_boundary_has_no_association_and_a_batch_fills_it(tmp_path):
    """A slide wholly of pyrite: its row is None (not 0 % free surface); the report prints '–' and the figures
    skip it. Summed with a slide where pyrite meets resin, the batch row has numbers."""
    from minseg.mineralogy.report import batch_document, markdown

    spec = MeasureSpec(NAMES, MineralogySettings(), 1.0)
    whole = measured(np.ones((20, 20), np.uint8), 8, spec)
    row = whole["association"]["pyrite"]
    assert row["boundary_px"] == 0 and row["boundary_um"] == 0.0
    assert row["free_surface_pct"] is None and set(row["shared_pct"].values()) == {None}
    assert "| pyrite | – |" in markdown(whole | {"slides": ["whole"], "left_out": []}, {}, "t", [])
    whole["colours"] = None
    assert "association.png" not in write_plots(whole, Storage(), str(tmp_path), "pyrite only")
    json.dumps(whole, allow_nan=False)
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 5:10] = 1
    batch, summed, _ = batch_document({"whole": whole, "grain": measured(labels, 8, spec)})
    assert summed == ["grain", "whole"]
    assert batch["association"]["pyrite"]["free_surface_pct"] == 100.0
    assert batch["association"]["pyrite"]["shared_pct"] == {"resin": 100.0, "chalcopyrite": 0.0, "gangue": 0.0}
    assert batch["association"]["gangue"]["free_surface_pct"] is None  # absent from both


@pytest.mark.parametrize("connectivity", [8, 4])
def test_corner_contacts_join_particles_under_8_connectivity_but_never_associate(connectivity):
    """A 2x2 pyrite and a 2x2 chalcopyrite touching only at a corner: association counts 4-neighbour pixel edges,
    so neither has a contact with the other (100 % free surface) whatever the connectivity. With 8 neighbours
    (the default) they are one particle, pyrite 50 % of it and 0 % liberated, which the association contradicts;
    with ``mineralogy.connectivity: 4`` they are two liberated particles and both agree (docs/mineralogy.md)."""
    labels = np.zeros((6, 6), np.uint8)
    labels[1:3, 1:3] = 1
    labels[3:5, 3:5] = 2
    document = measured(labels, 6, MeasureSpec(NAMES, MineralogySettings(connectivity=connectivity), 1.0))
    for mineral in ("pyrite", "chalcopyrite"):
        row = document["association"][mineral]
        assert row["boundary_px"] == 8 and row["free_surface_pct"] == 100.0
        assert row["shared_pct"]["chalcopyrite" if mineral == "pyrite" else "pyrite"] == 0.0
    pyrite = document["liberation"]["pyrite"]
    if connectivity == 8:
        assert document["particles"]["count"] == 1
        assert pyrite["liberated_pct"] == 0.0 and pyrite["classes_pct"]["50-60"] == 100.0
    else:
        assert document["particles"]["count"] == 2
        assert pyrite["liberated_pct"] == 100.0 and pyrite["classes_pct"]["50-60"] == 0.0
