"""Standard JSON text (RFC 8259) for every record, report and log line minseg writes."""

from __future__ import annotations

import json
from typing import Any, Callable


def json_text(document, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``document`` as standard JSON (RFC 8259), the form every run record and report is written in.

    NaN and infinity, which JSON has no numbers for, become ``null``: an IoU of a class absent from a split and
    nowhere predicted, an AUC of a fold without a deposit, are undefined, not numbers. (Python's ``json`` would
    write a bare ``NaN``, which jq, JavaScript, Arrow and most JSON readers refuse.) NumPy scalars and arrays become
    plain numbers and lists. Readers of metrics take ``null`` as undefined (``minseg.metrics.metric_value``).

    ``default`` turns any other value into one JSON has (log lines: ``str``).

    Raises:
        TypeError: a value with no JSON form and no ``default`` (a bug: documents hold numbers, text, lists and
            mappings)."""
    return json.dumps(_json_ready(document), indent=indent, allow_nan=False, default=default)


def _json_ready(value):
    if isinstance(value, float):  # np.float64 too
        return value if value - value == 0 else None  # inf - inf and nan - nan are nan
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # float32, int64, bool_, arrays
        return _json_ready(value.tolist())
    if not isinstance(value, (str, int)) and hasattr(value, "__float__"):  # a 0-d tensor, a Decimal
        return _json_ready(float(value))
    return value
