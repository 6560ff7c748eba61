"""Connecting to Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import os

from minseg.config.schema import RaySettings
from minseg.logs import _is_interactive, configure_logging, get_logger, log_event

log = get_logger("runtime")


def _worker_setup() -> None:
    configure_logging()


def init_ray(settings: RaySettings | None = None):
    """Join the configured cluster (``ray.address`` / RAY_ADDRESS) or start a local one.

    Safe to call twice; a Ray instance already started (tests, ``ray job submit``) is reused.
    """
    import ray

    settings = settings or RaySettings()
    if not ray.is_initialized():
        address = settings.address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(
            include_dashboard=False,
            configure_logging=False,
            runtime_env={"worker_process_setup_hook": "minseg.runtime._worker_setup"},
        )
        if address:
            ray.init(address=address, **kwargs)
        else:
            store = settings.object_store_mib * 2**20 if settings.object_store_mib else None
            ray.init(num_cpus=settings.num_cpus, object_store_memory=store, **kwargs)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = _is_interactive(__import__("sys").stderr)
    resources = ray.cluster_resources()
    log_event(log, "ray.ready", cpus=resources.get("CPU", 0), gpus=resources.get("GPU", 0), nodes=len(ray.nodes()))
    return ray


FORWARDED_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                         "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def task_options(storage_settings) -> dict:
    """Extra Ray remote options for tasks and actors that touch storage."""
    if not storage_settings.forward_credentials:
        return {}
    env = {name: os.environ[name] for name in FORWARDED_ENVIRONMENT if os.environ.get(name)}
    return {"runtime_env": {"env_vars": env}} if env else {}
