"""Rows of dicts as CSV text: one writer for every table minseg saves."""

from __future__ import annotations

import csv
import io
from typing import Iterable


def csv_text(rows: Iterable[dict], columns: list[str] | None = None, ignore_extra: bool = False) -> str:
    """CSV with a header. Columns default to every key in order of first appearance."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore" if ignore_extra else "raise")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
