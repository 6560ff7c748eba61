"""Run records and reports are standard JSON: a number JSON cannot hold is written null and read back as
undefined."""

import json
import math

import numpy as np
import pytest

from minseg.io.storage import Storage, json_text
from minseg.metrics import metric_value
from tests.support.documents import strict_json


def test_non_finite_numbers_are_written_null_and_numpy_values_as_plain_ones():
    document = {"miou": float("nan"), "iou": [0.5, np.float32("nan"), np.float64("inf"), -math.inf],
                "counts": np.array([[1, 2], [3, 4]], np.int64), "n": np.int32(7), "ok": np.bool_(True),
                "pair": (np.float16(0.25), None), "text": "NaN"}
    text = json_text(document)
    assert json.loads(text, parse_constant=pytest.fail) == {
        "miou": None, "iou": [0.5, None, None, None], "counts": [[1, 2], [3, 4]], "n": 7, "ok": True,
        "pair": [0.25, None], "text": "NaN"}
    assert json_text({"a": 1}, indent=None) == '{"a": 1}'
    with pytest.raises(TypeError):  # no JSON form: a bug, not silently stringified
        json_text({"a": object()})


def test_an_undefined_metric_reads_back_as_undefined(tmp_path):
    storage = Storage()
    metrics = {"classes": ["resin", "pyrite"], "iou": [0.75, float("nan")], "miou": 0.75, "accuracy": float("nan")}
    storage.write_json(str(tmp_path / "m.json"), metrics)
    back = strict_json(tmp_path / "m.json")
    assert back["iou"] == [0.75, None] and back["accuracy"] is None
    assert math.isnan(metric_value(back, "iou:pyrite")) and math.isnan(metric_value(back, "accuracy"))
    assert metric_value(back, "iou:resin") == metric_value(metrics, "iou:resin") == 0.75


def test_json_log_lines_hold_no_bare_nan():
    import logging
    from pathlib import Path

    from minseg.logs import _JsonFormatter

    record = logging.LogRecord("minseg.geo", logging.INFO, __file__, 1, "prospect.fold_scored", None, None)
    record.fields = {"auc": float("nan"), "where": Path("/data/x.tif"), "count": np.int64(3)}
    line = json.loads(_JsonFormatter().format(record), parse_constant=pytest.fail)
    assert line["auc"] is None and line["where"] == "/data/x.tif" and line["count"] == 3
