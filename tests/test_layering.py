"""The package's layers import only downwards (docs/architecture.md).

Every ``import`` in minseg/ is read from the source (module level and inside functions:
a lazy import is still a dependency) and checked against the layer of the importing
module. Data flows storage → data → learners → voting → stitching → storage; a module
never reaches up the stack.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minseg"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = [
    ("foundation", ["minseg", "minseg.errors", "minseg.enums", "minseg.jsontext", "minseg.logs", "minseg.config.base",
                    "minseg.device"]),
    ("storage", ["minseg.io"]),
    ("data", ["minseg.data", "minseg.synth", "minseg.runtime", "minseg.preflight", "minseg.config.loading",
              "minseg.mineralogy"]),
    ("learners", ["minseg.models", "minseg.losses", "minseg.metrics"]),
    ("ensemble", ["minseg.ensemble.config", "minseg.ensemble.voting", "minseg.ensemble.manifest",
                  "minseg.ensemble.sliding", "minseg.ensemble.runtime", "minseg.ensemble.selection"]),
    # every job's settings and the root that assembles them: jobs receive the typed root
    ("settings", ["minseg.config", "minseg.train.config", "minseg.inference.config", "minseg.geo.config"]),
    ("jobs", ["minseg.train", "minseg.ensemble", "minseg.inference", "minseg.geo", "minseg.analysis"]),
    ("entrypoints", ["minseg.__main__", "minseg.demo", "minseg.cli", "minseg.job_checks"]),
]
# Within the jobs layer: which job packages may use which (prospectivity trains with the training job's
# machinery; nothing else crosses).
JOB_IMPORTS = {
    "minseg.train": set(),
    "minseg.ensemble": set(),
    "minseg.inference": set(),
    "minseg.geo": {"minseg.train"},
    "minseg.analysis": set(),
}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that matched): the longest listed prefix wins."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # the bare package name is one module (minseg/__init__.py), not a prefix of every module
            if module == prefix or (prefix != "minseg" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from minseg.x import sub`
    # names the package __init__ files export lazily (minseg.config.__getattr__) count as imports too
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and path.name == "__init__.py":
            found.update(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                         and v.value.startswith("minseg."))
    return {name for name in found if name == "minseg" or name.startswith("minseg.")}


def _existing(name: str) -> str:
    """``minseg.a.b.Name`` -> the longest prefix that is a module or package."""
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return name


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_only_go_down(path):
    module = module_name(path)
    level, own = layer_of(module)
    upward = []
    for target in sorted({_existing(name) for name in imports_of(path)}):
        target_level, target_prefix = layer_of(target)
        if target_level > level:
            upward.append(f"{target} ({LAYERS[target_level][0]} layer)")
        elif LAYERS[level][0] == "jobs" and target_level == level and own != target_prefix and target_prefix not in JOB_IMPORTS[own]:
            upward.append(f"{target} (another job package)")
    assert not upward, f"{module} ({LAYERS[level][0]} layer) imports " + ", ".join(upward)


def test_the_lower_layers_never_name_the_jobs():
    """The issue's own wording: io, data and models import nothing from train/ensemble/inference/geo/cli."""
    forbidden = ("minseg.train", "minseg.ensemble", "minseg.inference", "minseg.geo", "minseg.cli", "minseg.demo",
                 "minseg.config.schema")
    for package in ("io", "data", "models"):
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = [name for name in imports_of(path) if name.startswith(forbidden)]
            assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_checker_sees_lazy_imports(tmp_path):
    """A function-level import counts: the check would fail on it."""
    sample = PACKAGE / "io" / "storage.py"
    assert "minseg.io.config" in imports_of(sample)
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from minseg.train.loop import train_worker\n")
    assert "minseg.train.loop" in imports_of(fake)
