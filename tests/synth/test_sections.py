import io

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from minseg.synth.minerals import CLASS_NAMES, REFLECTANCE
from minseg.synth.sections import SectionRenderer, render_section


def test_deterministic_by_seed():
    a_img, a_mask = render_section(seed=4, height=96, width=128)
    b_img, b_mask = render_section(seed=4, height=96, width=128)
    c_img, _ = render_section(seed=5, height=96, width=128)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (96, 128, 3) and a_img.dtype == np.uint8
    assert a_mask.shape == (96, 128) and a_mask.dtype == np.uint8


@pytest.mark.parametrize("window", [(0, 0, 100, 100), (37, 211, 150, 90), (400, 400, 112, 112), (511, 0, 1, 600)])
def test_any_window_equals_the_crop_of_a_bigger_render(window):
    """What makes tile-by-tile streaming of huge slides exact."""
    y0, x0, h, w = window
    big_img, big_mask = SectionRenderer(seed=9).render(0, 0, 600, 650)
    img, mask = SectionRenderer(seed=9).render(y0, x0, h, w)
    assert np.array_equal(img, big_img[y0 : y0 + h, x0 : x0 + w])
    assert np.array_equal(mask, big_mask[y0 : y0 + h, x0 : x0 + w])


def test_all_classes_with_imbalanced_particle_counts():
    _, mask = SectionRenderer(seed=1).render(0, 0, 2048, 2048)
    present = set(np.unique(mask).tolist())
    assert present == set(range(len(CLASS_NAMES)))
    counts = {name: ndimage.label(mask == c)[1] for c, name in enumerate(CLASS_NAMES)}
    assert counts["magnetite"] > 5 * counts["pyrrhotite"]  # the paper's imbalance, in spirit
    assert counts["magnetite"] == max(counts[n] for n in CLASS_NAMES[1:])


def _jpeg(image: np.ndarray) -> np.ndarray:
    """Through a JPEG-tiled TIFF, as the demo slide and most scanners store it."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, tile=(256, 256), compression="jpeg", photometric="rgb")
    buffer.seek(0)
    return tifffile.imread(buffer)


def test_hard_cases_are_hard_but_separable_as_under_the_microscope():
    """Gangue is dark like the resin and sphalerite grey like magnetite (the paper's confusions), but they stay
    apart by the cues a real reflected-light image has, and those survive JPEG compression: the resin is darker
    and smooth, sphalerite shows internal reflections, magnetite a brownish tint."""
    def distance(a, b):
        return float(np.linalg.norm(REFLECTANCE[CLASS_NAMES.index(a)] - REFLECTANCE[CLASS_NAMES.index(b)]))

    assert distance("gangue", "background") < distance("pyrite", "background") / 5
    assert distance("sphalerite", "magnetite") < distance("sphalerite", "galena") / 5
    image, mask = SectionRenderer(seed=2).render(0, 0, 1024, 1024)
    compressed = _jpeg(image)
    resin = ndimage.binary_erosion(mask == 0, iterations=3)  # away from grain edges
    gangue = ndimage.binary_erosion(mask == CLASS_NAMES.index("gangue"), iterations=3)
    grey = ndimage.uniform_filter(compressed.astype(np.float32).mean(axis=2), 5)
    threshold = (np.median(grey[resin]) + np.median(grey[gangue])) / 2
    separated = ((grey[resin] < threshold).sum() + (grey[gangue] >= threshold).sum()) / (resin.sum() + gangue.sum())
    assert np.median(grey[gangue]) - np.median(grey[resin]) > 20 and separated > 0.99
    # gangue textured (mottling, pits, internal reflections), the epoxy smooth, at scales JPEG keeps
    coarse = ndimage.uniform_filter(compressed.astype(np.float32).mean(axis=2), 3)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(coarse**2, 9) - ndimage.uniform_filter(coarse, 9) ** 2, 0))
    assert np.median(local_std[gangue]) > 3 * np.median(local_std[resin])  # 2.3 without mottle, pits, reflections
    sphalerite, magnetite = mask == CLASS_NAMES.index("sphalerite"), mask == CLASS_NAMES.index("magnetite")
    grey = compressed.astype(np.float32).mean(axis=2)
    assert (grey[sphalerite] > np.percentile(grey[magnetite], 99)).mean() > 0.004  # internal reflections
    red_minus_blue = compressed[..., 0].astype(np.float32) - compressed[..., 2]
    assert red_minus_blue[magnetite].mean() - red_minus_blue[sphalerite].mean() > 8  # magnetite's brownish tint


def test_grain_scale_changes_grain_size():
    _, small = SectionRenderer(seed=3, grain_scale=0.5).render(0, 0, 1024, 1024)
    _, large = SectionRenderer(seed=3, grain_scale=2.0).render(0, 0, 1024, 1024)
    pyrite = CLASS_NAMES.index("pyrite")
    mean_area = lambda m: (m == pyrite).sum() / max(1, ndimage.label(m == pyrite)[1])  # noqa: E731
    assert mean_area(large) > 3 * mean_area(small)  # 16x in area before cropping and overlaps
