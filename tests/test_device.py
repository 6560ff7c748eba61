"""One precision rule for training, evaluation, segmentation and mapping (minseg.device)."""

import pytest
import torch

from minseg.device import autocast_dtype, select_device
from minseg.enums import Precision


def test_cpu_runs_fp32_whatever_is_asked():
    for precision in Precision:
        assert autocast_dtype(precision, torch.device("cpu")) is None
    assert select_device(0.0) == torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_picks_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, native, expected):
    """torch's ``is_bf16_supported()`` counts emulation (True on a V100 or T4, where bf16 has no tensor cores);
    ``auto`` asks for native support. No GPU here: the query is answered as such a GPU answers it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    cuda = torch.device("cuda")
    assert autocast_dtype(Precision.AUTO, cuda) is expected
    assert autocast_dtype("bf16", cuda) is torch.bfloat16 and autocast_dtype("fp16", cuda) is torch.float16
    assert autocast_dtype(Precision.FP32, cuda) is None
