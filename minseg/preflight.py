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
from minseg.io.storage import dangling_link, has_glob, is_s3, nearest_existing, parse_uri, scratch_suffix
from minseg.logs import get_logger, log_event

log = get_logger("preflight")

# what a worker imports to run any minseg job (the task above names what it cannot import)
REQUIRED_MODULES = ("minseg", "torch", "ray.data", "numpy", "pyarrow", "zarr", "tifffile", "PIL", "scipy")
SHIP_HINT = ("ship minseg to the workers: run cluster/Dockerfile's image on every node, or submit with "
             "`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` (docs/cluster.md)")
SHARED_HINT = "use an s3:// URI or a folder on a mount every node shares (docs/cluster.md)"


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
    local = [u for u in found if u and not is_s3(u)]
    written = [u for u in outputs if u and not is_s3(u)]
    return ClusterPaths(tuple(dict.fromkeys(local)), tuple(dict.fromkeys(written)))


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


def one_line(text: object, limit: int = 300) -> str:
    """Exception texts (pip logs, numpy's import advice) as one short line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _local_path(uri: str) -> str:
    """The absolute local path of a URI or path, as storage reads it (``file://`` and relative forms)."""
    return parse_uri(uri).path


def _existing_prefix(path: str) -> str:
    """The part of a local path or glob that must exist: the folder above the first wildcard."""
    parts = path.split(os.sep)
    for index, part in enumerate(parts):
        if has_glob(part):
            return os.sep.join(parts[:index]) or (os.sep if path.startswith(os.sep) else ".")
    return path


def output_problems(paths: ClusterPaths) -> list[str]:
    """Why the driver cannot write a local output of ``paths`` (a read-only folder or disk, no permission), one
    line each: a scratch file is made and removed in the output folder, or in its nearest existing folder when it
    is not there yet (nothing is created that a job refused later would leave behind)."""
    problems = []
    for output in paths.outputs:
        folder = _local_path(output)
        link = dangling_link(folder)
        if link:
            problems.append(f"output {output!r} cannot be written ({link} is a link to {os.readlink(link)}, which "
                            "does not exist)")
            continue
        folder = nearest_existing(folder)
        if not os.path.isdir(folder):
            problems.append(f"output {output!r} cannot be written ({folder} is a file, not a folder)")
            continue
        probe = os.path.join(folder, f".minseg-writable-{uuid.uuid4().hex[:8]}{scratch_suffix()}")
        try:
            open(probe, "w").close()
            os.unlink(probe)
        except OSError as exc:
            problems.append(f"output {output!r} cannot be written ({folder}: {exc.strerror or one_line(exc)})")
    return problems


def path_problems(paths: ClusterPaths, package: str | None, workers_pending: bool) -> list[str]:
    """What can be said about the job's local paths before asking the nodes.

    Args:
        paths: the job's local paths.
        package: the driver's working folder when it is Ray's copy of ``--working-dir`` (ray job submit).
        workers_pending: only a head node that runs no work is up (a cluster scaling from zero): nothing
            can check that the workers to come will see a local path.
    """
    problems = []
    for output in paths.outputs:
        path = _local_path(output)  # a relative output resolves against the driver's folder
        if package and os.path.commonpath([package, path]) == package:
            problems.append(f"output {output!r} lies in Ray's temporary copy of --working-dir, deleted after the "
                            f"job (a relative output path under ray job submit)")
    local = list(paths.inputs) + list(paths.outputs)
    if workers_pending and local:
        problems.append(f"no worker node is up yet (the cluster scales from zero), so no node can show it sees "
                        f"the local path(s) {', '.join(local)}")
    return problems


def answer_problems(answers: list[tuple[str, dict]], markers: list[str], driver_version: str | None) -> list[str]:
    """What the nodes' answers show, one entry per kind of problem with the nodes that have it.

    Args:
        answers: (node description, the probe's answer) per node that answered.
        markers: files the driver wrote in its local output folders (every node must see them).
        driver_version: minseg's version on the driver (a node with another is refused); None: not checked.
    """
    grouped: dict[str, list[str]] = {}
    for where, answer in answers:
        found = []
        if answer["missing"]:
            found.append("cannot import " + ", ".join(f"{name} ({one_line(reason, 160)})"
                                                       for name, reason in answer["missing"].items()))
        elif driver_version is not None and answer["versions"].get("minseg") != driver_version:
            found.append(f"runs minseg {answer['versions'].get('minseg')}, the driver {driver_version}")
        unseen = [p for p in answer["unseen"] if p not in markers]
        if unseen:
            found.append(f"does not see {', '.join(unseen)}")
        folders = [os.path.dirname(p) for p in answer["unseen"] if p in markers]
        if folders:
            found.append(f"does not see the output folder(s) the driver wrote to: {', '.join(folders)}")
        for text in found:
            grouped.setdefault(text, []).append(where)
    return [f"{', '.join(wheres)}: {text}" for text, wheres in grouped.items()]


def _message(problems: list[str]) -> str:
    text = "the cluster cannot run this job: " + "; ".join(problems)
    hints = []
    if any(word in text for word in ("cannot import", "runs minseg", "did not answer", "check failed")):
        hints.append(SHIP_HINT)
    if any(word in text for word in ("does not see", "temporary copy", "scales from zero", "cannot be written")):
        hints.append(SHARED_HINT)
    return text + "".join(f"; {hint}" for hint in hints)


def preflight_timeout(configured: float | None, runtime_env: dict) -> float:
    """Seconds the nodes have to answer: as configured, else 120, or 1200 when the job installs packages on
    each node first (a pip / uv / conda runtime environment: a CUDA torch takes minutes)."""
    if configured is not None:
        return configured
    return 1200.0 if {"pip", "uv", "conda"} & set(runtime_env or {}) else 120.0


def preflight(paths: ClusterPaths, timeout_s: float | None = None, modules: tuple[str, ...] = REQUIRED_MODULES) -> None:
    """Check the connected cluster before a job starts (module doc).

    Args:
        paths: the job's local paths (:func:`job_paths`).
        timeout_s: how long every live node has to answer (seconds; None: :func:`preflight_timeout`); a node
            that does not answer in time is an error (its workers may be failing to start).
        modules: what each node must import.

    Raises:
        ClusterSetupError: a node cannot import a module, runs another minseg than the driver, does not
            answer, or cannot see a local input or output; a relative output under ``ray job submit``; local
            paths on a cluster whose workers are not up yet. One line, naming the nodes and the fix.
    """
    import ray
    from ray import cloudpickle
    from ray._private import ray_constants
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import minseg

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    runtime_env = ray.get_runtime_context().runtime_env or {}
    timeout_s = preflight_timeout(timeout_s, runtime_env)
    package = os.getcwd() if runtime_env.get("working_dir") else None  # ray job submit: Ray's copy of it
    resources = nodes[0].get("Resources", {}) if len(nodes) == 1 else {}
    pending = len(nodes) == 1 and not resources.get("CPU") and not resources.get("GPU")
    problems = path_problems(paths, package, pending)
    several = len(nodes) > 1
    checked = [_existing_prefix(_local_path(p)) for p in paths.inputs] if (several or package) else []
    markers: list[str] = []
    if several and not problems:  # a shared output folder: the driver writes a marker, every node must see it
        for output in paths.outputs:
            folder = _local_path(output)
            try:
                os.makedirs(folder, exist_ok=True)
                marker = os.path.join(folder, f".minseg-preflight-{uuid.uuid4().hex[:8]}{scratch_suffix()}")
                open(marker, "w").close()
                markers.append(marker)
            except OSError as exc:
                problems.append(f"output {output!r} cannot be written on the driver ({one_line(exc)})")
    if problems:
        _remove(markers)
        raise ClusterSetupError(_message(problems))

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers may lack minseg: send the code
    # the job's worker setup hook imports minseg: the probe's workers must not run it (an empty value skips it)
    no_hook = {"env_vars": {ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: ""}}
    probe = ray.remote(_probe)
    refs = {probe.options(num_cpus=0, max_retries=0, runtime_env=no_hook,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(tuple(modules), tuple(checked + markers)): node for node in nodes}
    answers: list[tuple[str, dict]] = []
    try:
        ready, pending_refs = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}  # nodes may leave meanwhile
        for ref in pending_refs:
            ray.cancel(ref, force=True)
            if refs[ref]["NodeID"] in alive:
                problems.append(f"{_where(refs[ref])} did not answer within {timeout_s:g} s (its workers may be "
                                f"failing to start: see its Ray logs)")
        for ref in ready:
            try:
                answer = ray.get(ref)
            except Exception as exc:
                if refs[ref]["NodeID"] in alive:
                    problems.append(f"{_where(refs[ref])}: the check failed ({one_line(exc)})")
                continue
            answers.append((_where(refs[ref], answer["host"]), answer))
    finally:
        _remove(markers)
    problems += answer_problems(answers, markers, minseg.__version__ if "minseg" in modules else None)
    if problems:
        raise ClusterSetupError(_message(problems))
    log_event(log, "ray.preflight", nodes=len(nodes), modules=len(modules), paths=len(checked) + len(markers),
              timeout_s=timeout_s)


def _where(node: dict, host: str | None = None) -> str:
    return f"node {node.get('NodeManagerAddress', '?')} ({(host + ', ') if host else ''}{node['NodeID'][:8]})"


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
