"""Scoring a label map against a reference (the demo's slide against its true mask)."""

import numpy as np
import pytest
from PIL import Image

from minseg.errors import InputError
from minseg.inference.compare import compare_label_maps
from tests.inference.test_measure import NAMES, write_labels_tif, write_zarr
from tests.mineralogy.test_components import blob_labels


def test_scores_are_those_of_the_pixels(tmp_path):
    truth = blob_labels((96, 80), 4, seed=2)
    predicted = truth.copy()
    predicted[:10] = 0  # 800 pixels wrong where the truth was not resin
    write_zarr(str(tmp_path / "map.zarr"), predicted)
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "truth.png")  # a PNG names no classes
    scores = compare_label_maps(str(tmp_path / "map.zarr"), str(tmp_path / "truth.png"), NAMES)
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == truth))
    pyrite = ((predicted == 1) & (truth == 1)).sum() / ((predicted == 1) | (truth == 1)).sum()
    assert scores["iou"][1] == pytest.approx(pyrite)


def test_maps_naming_their_classes_otherwise_are_refused(tmp_path):
    """Ids are compared as they are: a map or reference numbering its classes otherwise would score swapped
    classes as right. Either side naming its classes otherwise than the names compared is refused; case aside."""
    labels = blob_labels((64, 64), 4, seed=1)
    write_zarr(str(tmp_path / "map.zarr"), labels)
    write_labels_tif(tmp_path / "reference.tif", labels)
    swapped = ["resin", "chalcopyrite", "pyrite", "gangue"]
    with pytest.raises(InputError, match=r"map.zarr names its classes otherwise: class id 1 is 'pyrite' in it, "
                                         r"'chalcopyrite' in the classes compared"):
        compare_label_maps(str(tmp_path / "map.zarr"), str(tmp_path / "reference.tif"), swapped)
    write_zarr(str(tmp_path / "swapped.zarr"), labels, names=swapped)
    with pytest.raises(InputError, match=r"swapped.zarr names its classes otherwise"):
        compare_label_maps(str(tmp_path / "reference.tif"), str(tmp_path / "swapped.zarr"), NAMES)
    with pytest.raises(InputError, match=r"map.zarr names its classes otherwise: it names 4 classes \(.*\), the "
                                         r"classes compared 5"):
        compare_label_maps(str(tmp_path / "map.zarr"), str(tmp_path / "reference.tif"), [*NAMES, "galena"])
    same = compare_label_maps(str(tmp_path / "map.zarr"), str(tmp_path / "reference.tif"), [n.title() for n in NAMES])
    assert same["miou"] == 1.0


def test_names_are_compared_case_aside_and_only_when_every_class_is_named(tmp_path):
    """The mineralogy matches class names in any case, so ``--classes Pyrite`` for a map naming ``pyrite`` is the
    same classes (it was refused); a TIFF whose class list lacks a name names nothing (was a crash comparing None)."""
    from minseg.inference.config import MeasureSettings
    from minseg.inference.labelmaps import class_names_difference, open_label_map
    from minseg.inference.measure import check_label_maps
    from minseg.io.storage import Storage
    from minseg.io.tiff import PyramidSpec, write_pyramids

    labels = blob_labels((64, 64), 4, seed=1)
    write_zarr(str(tmp_path / "map.zarr"), labels)
    titled = [n.title() for n in NAMES]
    assert class_names_difference(NAMES, titled, "the map", "--classes") is None
    settings = MeasureSettings(labels=[str(tmp_path / "map.zarr")], classes=titled)
    check_label_maps(settings, [(str(tmp_path / "map.zarr"), None)], Storage())  # no problem: not raised
    unnamed = {"classes": [{"id": 0, "name": "resin"}, {"id": 1}, {"id": 2, "name": None}, {"id": 3, "name": ""}]}
    spec = PyramidSpec(64, 64, tile=64, reduce="nearest", metadata=unnamed)
    write_pyramids([(str(tmp_path / "gaps.tif"), spec)], lambda r, c: (labels,))
    with open_label_map(str(tmp_path / "gaps.tif"), Storage()) as opened:
        assert opened.names is None
    assert compare_label_maps(str(tmp_path / "gaps.tif"), str(tmp_path / "map.zarr"), NAMES)["miou"] == 1.0
