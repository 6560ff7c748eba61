"""Before a job runs on a cluster minseg did not start: can every node run it, and see its paths?

A cluster whose workers cannot import minseg does not fail: each worker dies on ``No module named
'minseg'`` and Ray starts another, without end. Paths fail quietly too: under ``ray job submit`` the
driver's working folder is Ray's temporary copy of ``--working-dir`` (a relative output lands there
and is deleted later), and a local path on the submitting machine does not exist on the workers.

:func:`preflight` runs one small task on every live node (pinned there, no CPU taken) that imports
what the jobs need and looks for the job's local paths, with a deadline, and raises
:class:`ClusterSetupError` (exit 2) naming the node, what is missing and how to ship it. The task
is sent by value and replaces the job's worker setup hook (which imports minseg), so it runs on a
node where minseg is missing; it uses the standard library only.

:func:`job_paths` collects a job's local inputs (from its config sections) and outputs.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass

from minseg.errors import InputError
from minseg.logs import get_logger, log_event

log = get_logger("preflight")

# what a worker imports to run any minseg job (the task above names what it cannot import)
REQUIRED_MODULES = ("minseg", "torch", "ray.data", "numpy", "pyarrow", "zarr", "tifffile", "PIL", "scipy")
SHIP_HINT = ("ship minseg to the workers: run cluster/Dockerfile's image on every node, or submit with "
             "`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` (docs/cluster.md)")
SHARED_HINT = "use an s3:// URI or a folder on a mount every node shares (docs/cluster.md)"
_GLOB = set("*?[")


class ClusterSetupError(InputError):
    """The cluster cannot run this job as configured: a node lacks packages or cannot see a path."""


@dataclass(frozen=True)
class ClusterPaths:
    """Local (non-s3) paths a job reads and writes, as written in the config."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


def job_paths(inputs, outputs) -> ClusterPaths:
    """The local paths of one job: ``inputs`` are URIs or validated config sections (pydantic models, walked for
    fields named ``uri``, ``*_uri`` or ``slides``, a string or list; ``*output_uri`` fields are skipped),
    ``outputs`` the URIs the job writes. s3:// URIs and None are left out; order kept, duplicates dropped."""
    from pydantic import BaseModel

    found: list[str] = []

    def visit(value, name: str) -> None:
        if isinstance(value, BaseModel):
            for field in type(value).model_fields:
                visit(getattr(value, field), field)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, name)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, name)
        elif isinstance(value, str) and (name in ("", "uri", "slides") or name.endswith("_uri")) \
                and not name.endswith("output_uri"):
            found.append(value)

    for item in inputs:
        visit(item, "")
    local = [u for u in found if u and not u.startswith("s3://")]
    written = [u for u in outputs if u and not u.startswith("s3://")]
    return ClusterPaths(tuple(dict.fromkeys(local)), tuple(dict.fromkeys(written)))


# Stands in for the job's worker setup hook (``minseg.runtime._worker_setup``, an import of minseg) in the
# probe's workers: a task's hook must be an importable name, and this one is importable everywhere and harmless.
_NO_SETUP = "os.getpid"


def _probe(modules: tuple[str, ...], paths: tuple[str, ...]) -> dict:
    """On one node (standard library only: minseg may be missing here): what imports, what exists."""
    import importlib
    import os
    import socket

    missing, versions = {}, {}
    for name in modules:
        try:
            module = importlib.import_module(name)
            versions[name] = str(getattr(module, "__version__", ""))
        except BaseException as exc:  # an import can fail in any way (a broken CUDA build, a missing .so)
            missing[name] = f"{type(exc).__name__}: {exc}"
    return {"host": socket.gethostname(), "missing": missing, "versions": versions,
            "unseen": [path for path in paths if not os.path.exists(path)]}


def _existing_prefix(path: str) -> str:
    """The part of a local path or glob that must exist: the folder above the first wildcard."""
    parts = path.split(os.sep)
    for index, part in enumerate(parts):
        if _GLOB & set(part):
            return os.sep.join(parts[:index]) or os.sep
    return path


def preflight(paths: ClusterPaths, timeout_s: float, modules: tuple[str, ...] = REQUIRED_MODULES) -> None:
    """Check the connected cluster before a job starts (module doc).

    Args:
        paths: the job's local paths (:func:`job_paths`).
        timeout_s: how long every live node has to answer (seconds); a node that does not answer in time
            is an error (its workers may be failing to start).
        modules: what each node must import.

    Raises:
        ClusterSetupError: a node cannot import a module, runs another minseg than the driver, does not
            answer, or cannot see a local input or output; a relative output under ``ray job submit``.
    """
    import ray
    from ray import cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import minseg

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    working_dir = (ray.get_runtime_context().runtime_env or {}).get("working_dir")
    several = len(nodes) > 1
    problems: list[str] = []
    package = os.getcwd() if working_dir else None  # under ray job submit: Ray's copy of --working-dir
    for output in paths.outputs:
        path = os.path.abspath(output)  # relative outputs were made absolute against the driver's folder
        if package and os.path.commonpath([package, path]) == package:
            problems.append(f"output {output!r} lies in Ray's temporary copy of --working-dir, deleted after the "
                            f"job (a relative output path under ray job submit); {SHARED_HINT}")
    checked = [os.path.abspath(_existing_prefix(p)) for p in paths.inputs] if (several or working_dir) else []
    markers = []
    if several:  # an output folder every node can see: one node writes a marker, every node must find it
        for output in paths.outputs:
            if not problems:
                try:
                    os.makedirs(output, exist_ok=True)
                    marker = os.path.join(os.path.abspath(output), f".minseg-preflight-{uuid.uuid4().hex}")
                    open(marker, "w").close()
                    markers.append(marker)
                except OSError as exc:
                    problems.append(f"output {output!r} cannot be written on the driver ({exc})")
    if problems:
        _remove(markers)
        raise ClusterSetupError("; ".join(problems))

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers may lack minseg: send the code
    probe = ray.remote(_probe)
    refs = {probe.options(num_cpus=0, max_retries=0, runtime_env={"worker_process_setup_hook": _NO_SETUP},
                          scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(tuple(modules), tuple(checked + markers)): node for node in nodes}
    try:
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in pending:
            node = refs[ref]
            problems.append(f"node {node['NodeManagerAddress']} did not answer within {timeout_s:g} s (its workers "
                            f"may be failing to start: see its Ray logs); {SHIP_HINT}")
            ray.cancel(ref, force=True)
        for ref in ready:
            node = refs[ref]
            try:
                answer = ray.get(ref)
            except Exception as exc:
                problems.append(f"node {node['NodeManagerAddress']}: the check failed ({type(exc).__name__}: {exc})")
                continue
            where = f"node {node['NodeManagerAddress']} ({answer['host']})"
            if answer["missing"]:
                lacks = ", ".join(f"{name} ({reason})" for name, reason in answer["missing"].items())
                problems.append(f"{where} cannot import {lacks}; {SHIP_HINT}")
            elif "minseg" in modules and answer["versions"].get("minseg") != minseg.__version__:
                problems.append(f"{where} runs minseg {answer['versions'].get('minseg')}, the driver "
                                f"{minseg.__version__}; {SHIP_HINT}")
            unseen = [p for p in answer["unseen"] if p not in markers]
            if unseen:
                problems.append(f"{where} does not see {', '.join(unseen)}; {SHARED_HINT}")
            if any(p in markers for p in answer["unseen"]):
                problems.append(f"{where} does not see the output folder the driver wrote "
                                f"({', '.join(os.path.dirname(p) for p in markers)}); {SHARED_HINT}")
    finally:
        _remove(markers)
    if problems:
        raise ClusterSetupError("the cluster cannot run this job: " + "; ".join(problems))
    log_event(log, "ray.preflight", nodes=len(nodes), modules=len(modules), paths=len(checked) + len(markers))


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
