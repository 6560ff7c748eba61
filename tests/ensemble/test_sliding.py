import numpy as np
import pytest
import torch
from torch import nn

from minseg.ensemble.sliding import blend_ramp, predict_image, tile_probabilities


class PixelwiseModel(nn.Module):
    """A 1x1-conv network: its output depends only on each pixel, so tiling must not change it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("blend", ["gaussian", "pyramid", "uniform"])
def test_blending_reproduces_a_whole_image_pass(blend):
    model = PixelwiseModel().eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    mean, std = [100.0, 110.0, 120.0], [50.0, 55.0, 60.0]
    stitched = predict_image([model], image, 4, tile=32, overlap=8, mean=mean, std=std, blend=blend)[0]
    x = (torch.from_numpy(image).permute(2, 0, 1).float()[None] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    whole = torch.softmax(model(x), 1)[0].detach().numpy()
    np.testing.assert_allclose(stitched, whole, rtol=1e-5, atol=1e-6)


def test_image_smaller_than_a_tile_is_padded_then_cropped():
    model = PixelwiseModel().eval()
    image = np.full((10, 20, 3), 7, np.uint8)
    out = predict_image([model, model], image, 4, tile=32, overlap=0, mean=[0, 0, 0], std=[1, 1, 1])
    assert out.shape == (2, 4, 10, 20)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)


def test_weights_peak_in_the_middle_and_never_vanish():
    w = np.outer(blend_ramp(64, "gaussian"), blend_ramp(64, "gaussian"))
    assert w[32, 32] == w.max() and w.min() > 0 and w[0, 0] < w[16, 16] < w[32, 32]


def test_tta_of_an_equivariant_model_equals_no_tta():
    model = PixelwiseModel().eval()
    batch = torch.randn(2, 3, 16, 16)
    plain = tile_probabilities(model, batch)
    for mode in ("flips", "dihedral"):
        torch.testing.assert_close(tile_probabilities(model, batch, mode), plain)


def test_dihedral_tta_averages_the_whole_group_so_a_rotated_tile_gives_the_rotated_result():
    """The transpose was missing (7 views): the average over them is not the same for a tile and its views."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    batch = torch.randn(2, 3, 12, 12)
    out = tile_probabilities(model, batch, "dihedral")
    for view in (lambda t: t.transpose(-2, -1), lambda t: torch.rot90(t, 1, (-2, -1)), lambda t: t.flip(-1)):
        torch.testing.assert_close(tile_probabilities(model, view(batch), "dihedral"), view(out), atol=1e-5, rtol=0)
