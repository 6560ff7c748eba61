"""docs/warnings.md lists every warning minseg logs, by event name, and nothing else.

The warnings are read from the source: every call given ``logging.WARNING`` or ``logging.ERROR`` with an event
name (``log_event(log, "data.quarantined", logging.WARNING, ...)``, a wrapper's ``self._log("train.member.restarted",
i, logging.WARNING)``, an f-string ``f"{command}.report_failed"`` listed as ``<command>.report_failed``).
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENT = re.compile(r"[a-z][a-z_]*(\.[a-z_]+)+")
# warnings whose name is handed to a helper that logs it (``folders.item_folder``): no level at the call
INDIRECT = {"segment.renamed", "measure.renamed"}


def _name(node: ast.expr) -> str | None:
    """An event name as the doc writes it: a constant, or an f-string's ``{command}`` as ``<command>``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and EVENT.fullmatch(node.value):
        return node.value
    if isinstance(node, ast.JoinedStr):
        text = "".join(part.value if isinstance(part, ast.Constant) else f"<{ast.unparse(part.value)}>"
                       for part in node.values)
        return text if re.fullmatch(r"<command>(\.[a-z_]+)+", text) else None
    return None


def logged_warnings() -> dict[str, str]:
    found = {}
    for path in sorted((ROOT / "minseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            # a level, or a choice of levels (`WARNING if ... else`), given by position or as level=
            levels = [ast.unparse(a) for a in node.args] + [ast.unparse(k.value) for k in node.keywords
                                                             if k.arg == "level"]
            if not any(re.fullmatch(r"logging\.(WARNING|ERROR)( if .*)?", level) for level in levels):
                continue
            for arg in node.args[:2]:
                if name := _name(arg):
                    found.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def documented() -> set[str]:
    text = (ROOT / "docs" / "warnings.md").read_text()
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def test_every_warning_is_documented_by_its_event_name():
    logged = logged_warnings()
    assert len(logged) > 50 and "data.quarantined" in logged and "<command>.report_failed" in logged
    assert "train.member.restarted" in logged  # through the trial board's own wrapper
    assert "train.member.learned_nothing" in logged  # its level given as level=
    missing = {name: where for name, where in logged.items() if name not in documented()}
    assert not missing, f"warnings docs/warnings.md does not list: {missing}"


def test_every_documented_warning_is_logged():
    stale = documented() - set(logged_warnings()) - INDIRECT
    assert not stale, f"docs/warnings.md lists warnings no code logs: {sorted(stale)}"
