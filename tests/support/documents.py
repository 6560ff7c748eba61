"""Reading minseg's JSON records as a strict reader would (jq, JavaScript, Arrow): no NaN, no Infinity."""

import json
from pathlib import Path


def strict_json(path):
    """The document at ``path``; AssertionError naming the file where it holds NaN / Infinity (not JSON)."""
    def refuse(constant):
        raise AssertionError(f"{path}: {constant} is not a JSON number")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def every_record_is_strict_json(folder, skip: tuple[str, ...] = ()) -> int:
    """Parse every ``*.json`` under ``folder`` strictly (zarr metadata included), but for those in folders named
    in ``skip`` (``ray``: Ray Train's own state); the number parsed."""
    files = sorted(p for p in Path(folder).rglob("*.json") if not set(p.relative_to(folder).parts[:-1]) & set(skip))
    for path in files:
        strict_json(path)
    return len(files)
