"""Connecting to Ray the same way from the CLI, jobs and tests; the ``ray`` config section."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from pydantic import Field

from minseg.config.base import StrictModel
from minseg.errors import InputError
from minseg.config.base import PositiveInt
from minseg.io.config import StorageSettings
from minseg.logs import _is_interactive, configure_logging, get_logger, log_event, verbose

if TYPE_CHECKING:
    from minseg.preflight import ClusterPaths

log = get_logger("runtime")


class RaySettings(StrictModel):
    address: str | None = Field(None, description="cluster address; default RAY_ADDRESS or a local instance")
    num_cpus: PositiveInt | None = Field(None, description="CPUs for a local instance (default: all)")
    task_cpus: float = Field(0.5, gt=0, description="CPUs per data task; fractional leaves headroom on small nodes")
    preflight_timeout_s: float | None = Field(
        None, ge=0, description="on a cluster minseg joins (address / RAY_ADDRESS, ray job submit): seconds every "
        "live node has to show it can import minseg and see the job's local paths before the job starts (default: "
        "120, or 1200 when the job installs packages per node); 0 skips the check")
    object_store_mib: int | None = Field(None, ge=80, description="object store size of a local instance (default: "
                                         "Ray's, 30 % of RAM); every process that reads results maps its pages")
    check_resources: bool = Field(True, description="refuse actor pools (evaluation, score, segment, prospect "
                                  "prediction) the running cluster could never hold; false on autoscaling clusters "
                                  "that start empty (training has its own: training.check_resources)")


def worker_runtime_env(local: bool = False) -> dict:
    """The job-level runtime env of a job minseg starts or joins: every task and actor sets up logging as the
    driver does, and the pipelines a worker builds itself (a trial task's member data) draw no Ray Data progress
    bars (under --verbose they were forwarded to the console line by line, hundreds per member; pipelines built on
    the driver keep its choice: init_ray). ``local`` (an instance minseg starts on this machine): no Ray Train
    preemption watcher, one more process per member polling for a node preemption a single machine never has.

    A value set in the driver's environment is the user's, and goes to the workers as it is (on a cluster minseg
    joins, the workers do not inherit the driver's environment); one a submitted job's runtime env sets is left
    to it (Ray refuses a job whose runtime env and the driver's both set one variable). A new dict each call:
    Ray adds to the one it is given."""
    wanted = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    if local:
        wanted["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    job_sets = _submitted_job_env_vars()
    env_vars = {name: os.environ.get(name, value) for name, value in wanted.items() if name not in job_sets}
    env = {"worker_process_setup_hook": "minseg.runtime._worker_setup"}
    if env_vars:
        env["env_vars"] = env_vars
    return env


def _submitted_job_env_vars() -> dict:
    """The env vars of a ``ray job submit`` runtime env, which Ray's job supervisor hands the driver as JSON (in
    the variable its ``ray._private.runtime_env.constants`` names RAY_JOB_CONFIG_JSON_ENV_VAR, as ray.init reads
    it)."""
    import json

    document = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return (document.get("runtime_env") or {}).get("env_vars") or {}


def _worker_setup() -> None:
    configure_logging()


def quiet_ray_loggers(loud: bool) -> None:
    """Ray's, Ray Data's and Ray Train's Python loggers at WARNING on the console unless ``loud``
    (their INFO lines: execution plans, dataset starts)."""
    import logging

    for name in ("ray", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.INFO if loud else logging.WARNING)
    # notices, not problems: the local instance's default token auth and Ray Data's "progress bars disabled"
    for name in ("ray._private.authentication", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.INFO if loud else logging.ERROR)


@contextlib.contextmanager
def ray_data_errors_raised_not_logged():
    """Inside: Ray Data does not log a failed task's traceback (twice, at ERROR) before the driver's iteration
    raises it, unless ``verbose()``. For pipelines whose tasks raise input errors on purpose (the caller turns them
    into one message naming the file and row); anything else still reaches the caller, and its traceback with it."""
    import logging

    ray_data = logging.getLogger("ray.data")
    level = ray_data.level
    if not verbose():
        ray_data.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ray_data.setLevel(level)


def ray_log_dir() -> str | None:
    """Where this Ray session keeps every process's log (workers, actors, raylet), if known."""
    try:
        from ray._private.worker import _global_node

        return os.path.join(_global_node.get_session_dir_path(), "logs") if _global_node is not None else None
    except Exception:  # a client connection or a Ray without the attribute: not worth failing for
        return None


@contextlib.contextmanager
def stop_on_sigterm():
    """Within: SIGTERM raises ``errors.Terminated`` in the main thread (the CLI's commands and Ray jobs, which
    ``ray job stop`` ends by SIGTERM): the command unwinds as on Ctrl-C and says so in one line, where Python's
    default ended it without a word and Ray's (set by ``ray.init``: ``sys.exit(15)``) with its shutdown lines and
    exit status 15. ``init_ray`` keeps this handler across ``ray.init``; the handler before is put back at the end
    (a caller's own, in a process that runs commands in-process). No effect outside the main thread."""
    import signal
    import threading

    global _TERMINATED
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _TERMINATED = False
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def _raise_terminated(signum, frame):
    from minseg.errors import Terminated

    global _TERMINATED
    _TERMINATED = True
    raise Terminated()


def _shut_down_at_exit() -> None:
    """Shut the Ray instance this process started or joined down as the interpreter exits, as Ray's own exit hook
    does, but a Ctrl-C (or SIGTERM) while it does (a slow shutdown under load, after the command's last line) ends
    the process with one line, not Ray's hook's traceback ("Exception ignored in atexit callback")."""
    import sys

    import ray

    try:
        ray.shutdown()
    except KeyboardInterrupt:
        print(f"minseg: {'terminated (SIGTERM)' if _TERMINATED else 'interrupted'} while Ray shut down",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(143 if _TERMINATED else 130)  # Ray's hook would wait for the same shutdown again


def terminated() -> bool:
    """Whether SIGTERM reached this process (``stop_on_sigterm``): Ray's ``ray.get`` turns the exception a signal
    handler raises into a plain KeyboardInterrupt, so the CLI asks here what stopped the command."""
    return _TERMINATED


_TERMINATED = False


def init_ray(settings: RaySettings | None = None, paths: ClusterPaths | None = None):
    """Join the configured cluster (``ray.address`` / RAY_ADDRESS) or start a local, isolated one.

    Safe to call twice; a Ray instance already started (tests, ``ray job submit``) is reused. The local outputs of
    ``paths`` must be writable here (``preflight.output_problems``: InputError naming them, before any work).
    On joining a cluster, ``minseg.preflight.preflight`` checks every live node first (packages, the
    job's local ``paths``), within ``ray.preflight_timeout_s``, once per process and set of paths.
    By default Ray's own output (worker and actor stdout/stderr, Ray Data plans)
    stays in Ray's log folder (logged as ``ray.ready logs=...``) and the console shows minseg's
    lines; ``--verbose`` / MINSEG_LOG_LEVEL=debug forwards it to the console as Ray does.
    """
    import ray

    settings = settings or RaySettings()
    if paths is not None:  # before any work: a read-only output folder failed the job at its end
        from minseg.preflight import output_problems
        from minseg.errors import InputError

        if problems := output_problems(paths):
            raise InputError("; ".join(problems))
    global _CHECK_RESOURCES
    _CHECK_RESOURCES = settings.check_resources
    loud = verbose()
    quiet_ray_loggers(loud)
    started = not ray.is_initialized()
    if started:
        address = settings.address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=loud,
            runtime_env=worker_runtime_env(local=not address),
        )
        store = settings.object_store_mib * 2**20 if settings.object_store_mib and not address else None
        if store and store >= _physical_memory():
            raise InputError(f"ray.object_store_mib: {settings.object_store_mib} MiB is more than this machine's "
                             f"memory ({_physical_memory() // 2**20} MiB); leave it unset for Ray's default (30 % of "
                             "it)")
        import signal
        import threading

        handler = signal.getsignal(signal.SIGTERM)
        try:
            if address:
                ray.init(address=address, **kwargs)
                _JOINED.add(ray.get_runtime_context().gcs_address)
            else:  # "local": never join another Ray instance that happens to run on this machine
                ray.init(address="local", num_cpus=settings.num_cpus, object_store_memory=store, **kwargs)
        except Exception as exc:  # noqa: BLE001 (Ray raises OSError, ConnectionError, ValueError, bare Exception)
            from minseg.errors import RunError
            from minseg.preflight import one_line

            ray.shutdown()  # whatever it started before failing
            where = (f"join the cluster at {address} (is it up? `ray status` on its head node)" if address
                     else "start a local instance (its temporary folder: RAY_TMPDIR, else the system's)")
            raise RunError(f"Ray could not {where}: {type(exc).__name__}: {one_line(exc, 400)}") from exc
        finally:  # ray.init set its own (sys.exit), even when it failed: the command's stays
            if handler is _raise_terminated and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)
        import atexit

        atexit.unregister(_shut_down_at_exit)  # once, however many instances the process starts
        atexit.register(_shut_down_at_exit)  # runs before Ray's own (registered earlier, when ray was imported)
    import ray.data

    quiet_ray_loggers(loud)  # again: importing ray.data sets up its own loggers
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = loud and _is_interactive(__import__("sys").stderr)
    # items carry nested Python values (COCO / Labelme polygons, RLE dicts) that Arrow cannot type: pickled, as Ray
    # does by default, but said to be meant (unset, Ray warns "Failed to convert column 'polygons'" on the console)
    context.enable_fallback_to_arrow_object_ext_type = True
    if started:  # once per process: later phases reuse the instance
        resources = ray.cluster_resources()
        log_event(log, "ray.ready", cpus=resources.get("CPU", 0), gpus=resources.get("GPU", 0),
                  nodes=sum(1 for node in ray.nodes() if node.get("Alive")), logs=ray_log_dir() or "(on the cluster)")
    joined = ray.get_runtime_context().gcs_address if ray.get_runtime_context().gcs_address in _JOINED else None
    if joined and settings.preflight_timeout_s != 0:
        from minseg.preflight import ClusterPaths, preflight

        paths = paths or ClusterPaths()
        if (joined, paths) not in _CHECKED:
            preflight(paths, settings.preflight_timeout_s)
            _CHECKED.add((joined, paths))
    return ray


def _physical_memory() -> int:
    """This machine's memory in bytes (Linux, macOS)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_JOINED: set[str] = set()  # GCS addresses of clusters this process joined and did not start (preflight applies)
_CHECK_RESOURCES = True  # ray.check_resources of the job that last called init_ray
_CHECKED: set = set()  # (cluster, ClusterPaths) already checked in this process


FORWARDED_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                         "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def task_options(storage_settings: StorageSettings) -> dict:
    """Extra Ray remote options for tasks and actors that touch storage."""
    if not storage_settings.forward_credentials:
        return {}
    env = {name: os.environ[name] for name in FORWARDED_ENVIRONMENT if os.environ.get(name)}
    return {"runtime_env": {"env_vars": env}} if env else {}


class ResourceError(InputError):
    """A job asks for more than the cluster has: it could never be scheduled (Ray would wait forever)."""


def live_nodes(nodes: list[dict] | None = None) -> list[dict]:
    """The resources (``{"CPU": 16.0, "GPU": 1.0, ...}``) of each live node of ``nodes`` (``ray.nodes()``'s
    records; default: the running cluster's)."""
    if nodes is None:
        import ray

        nodes = ray.nodes()
    return [node.get("Resources", {}) for node in nodes if node.get("Alive")]


def fits_one_node(alive: list[dict], cpus: float, gpus: float) -> bool:
    """Whether one node of ``alive`` (``live_nodes``) holds ``cpus`` CPUs and ``gpus`` GPUs together: Ray places an
    actor, or one Ray Train worker, on a single node, however many the cluster has in all."""
    return any(r.get("CPU", 0) + 1e-9 >= cpus and r.get("GPU", 0) + 1e-9 >= gpus for r in alive)


def describe_nodes(alive: list[dict]) -> str:
    """``"20 CPUs and 1 GPUs (2 node(s), at most 16 CPUs and 1 GPUs on one)"``: what a refusal quotes of the
    cluster (the most CPUs and the most GPUs any one node has, not necessarily the same node)."""
    most_cpus = max((r.get("CPU", 0) for r in alive), default=0)
    most_gpus = max((r.get("GPU", 0) for r in alive), default=0)
    return (f"{sum(r.get('CPU', 0) for r in alive):g} CPUs and {sum(r.get('GPU', 0) for r in alive):g} GPUs "
            f"({len(alive)} node(s), at most {most_cpus:g} CPUs and {most_gpus:g} GPUs on one)")


def check_actor_pool(section: str, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                     extra_cpus: float = 0.0, nodes: list[dict] | None = None) -> None:
    """Refuse an actor pool the running cluster could never start, before Ray Data waits for it forever: one actor
    (``cpus_per_actor`` CPUs, ``gpus_per_actor`` GPUs) must fit on one live node, with ``extra_cpus`` beside it on
    the cluster (what the pool's feeding tasks need: ``segment.read_cpus``, or the actors would wait for input
    forever). A pool of ``actors`` larger than the cluster holds at once runs on those that fit (Ray Data starts
    what it can): a warning. ``section`` names the config keys (``evaluation``, ``score``, ``segment``,
    ``prospect.prediction``). ``nodes``: ``ray.nodes()`` (default: the running cluster's). Nothing is checked with
    ``ray.check_resources: false`` (autoscaling clusters that start empty, where nodes come when asked for).

    Raises:
        ResourceError: naming the keys, what one actor needs and what the cluster has.
    """
    if not _CHECK_RESOURCES:
        return
    alive = live_nodes(nodes)
    cpus = sum(r.get("CPU", 0) for r in alive)
    gpus = sum(r.get("GPU", 0) for r in alive)
    if fits_one_node(alive, cpus_per_actor, gpus_per_actor) and cpus_per_actor + extra_cpus <= cpus + 1e-9:
        if actors * cpus_per_actor + extra_cpus > cpus + 1e-9 or actors * gpus_per_actor > gpus + 1e-9:
            log_event(log, "runtime.pool_larger_than_cluster", logging.WARNING, section=section, actors=actors,
                      cluster_cpus=cpus, cluster_gpus=gpus, hint=f"fewer {section}.actors run at once")
        return
    raise ResourceError(
        f"{section}: an actor of {section}.cpus_per_actor {cpus_per_actor:g} CPUs and "
        f"{section}.gpus_per_actor {gpus_per_actor:g} GPUs"
        + (f", plus {extra_cpus:g} CPUs for the tasks that feed it ({section}.read_cpus)" if extra_cpus else "")
        + f"; the cluster has {describe_nodes(alive)}, so the pool could never start (Ray would wait forever). "
        f"Lower {section}.cpus_per_actor / gpus_per_actor or add nodes (set ray.check_resources: false on autoscaling "
        "clusters that start empty).")


@contextlib.contextmanager
def actor_errors(what: str):
    """Inside: iterating a Ray Data pipeline whose actors raise minseg errors (a member that cannot be loaded).
    Ray wraps an error raised in an actor's constructor into ``ActorDiedError`` (keeping only its text, hundreds of
    lines of traceback) and one raised in a task into ``RayTaskError``: either becomes the minseg error itself,
    its message alone (the CLI's exit 2, no traceback), prefixed with ``what`` (e.g. "evaluation actors").
    Anything else goes on as it is."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (only a minseg error found inside is replaced)
        found = minseg_error_in(exc)
        if found is None:
            raise
        try:
            error = type(found)(f"{what}: {found}")
        except TypeError:  # a subclass with another signature: its message as an input error
            error = InputError(f"{what}: {found}")
        raise error from None


def minseg_error_in(exc: BaseException):
    """The ``MinsegError`` behind a Ray exception (its ``cause``, the exception chain, or the last
    ``minseg....Error: message`` line of an actor's creation traceback), as an instance; None when there is none."""
    import importlib
    import re

    from minseg.errors import MinsegError

    seen, chain, item = set(), [], exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        chain.append(item)
        item = getattr(item, "cause", None) if isinstance(getattr(item, "cause", None), BaseException) else \
            (item.__cause__ or item.__context__)
    for item in chain:
        if isinstance(item, MinsegError) and type(item).__module__.startswith("minseg"):
            return item
        if isinstance(item, MinsegError):  # Ray's RayTaskError(MinsegError) subclass: its cause's class
            cause = getattr(item, "cause", None)
            if isinstance(cause, MinsegError):
                return cause
    for item in chain:
        matches = re.findall(r"^(minseg(?:\.\w+)+)\.(\w+): (.+)$", str(item), re.MULTILINE)
        for module, name, message in reversed(matches):
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
            if isinstance(cls, type) and issubclass(cls, MinsegError):
                try:
                    return cls(message.strip())
                except TypeError:  # a subclass with another signature (ConfigError): its message as an input error
                    return InputError(message.strip())
    return None
