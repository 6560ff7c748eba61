import json

import numpy as np
from PIL import Image

from minseg.synth.config import SectionsSynth
from minseg.synth.dataset import item_seed, write_section_dataset
from minseg.synth.sections import render_section


def test_section_dataset_on_ray(ray_session, tmp_path):
    settings = SectionsSynth(count=5, height=96, width=80)
    summary = write_section_dataset(str(tmp_path), settings, seed=2)
    images = sorted((tmp_path / "images").iterdir())
    masks = sorted((tmp_path / "masks").iterdir())
    assert [p.stem for p in images] == [p.stem for p in masks] == [f"section_{i:05d}" for i in range(5)]
    image = np.array(Image.open(images[3]))
    mask = np.array(Image.open(masks[3]))
    expected_image, expected_mask = render_section(item_seed(2, 3), 96, 80)
    assert np.array_equal(image, expected_image) and np.array_equal(mask, expected_mask)
    classes = json.loads((tmp_path / "classes.json").read_text())
    assert len(classes["classes"]) == 9 and classes["classes"][8]["name"] == "gangue"
    stats = json.loads((tmp_path / "dataset.json").read_text())
    assert stats == summary and stats["images"] == 5
    assert abs(sum(c["pixel_share"] for c in stats["classes"].values()) - 1) < 1e-3
    # written again with fewer sections: the earlier dataset's extra pairs are not left to be trained on
    write_section_dataset(str(tmp_path), SectionsSynth(count=2, height=96, width=80), seed=2)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["section_00000.png", "section_00001.png"]
    assert len(list((tmp_path / "masks").iterdir())) == 2


def test_a_folder_of_someone_elses_images_is_not_cleared(ray_session, tmp_path):
    import pytest

    from minseg.errors import InputError

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(InputError, match=r"already holds images/ that synth did not write \(no dataset.json\)"):
        write_section_dataset(str(tmp_path), SectionsSynth(count=2, height=96, width=80), seed=2)
    assert (tmp_path / "images" / "photo.jpg").read_bytes() == b"mine"
