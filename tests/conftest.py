from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3server import S3Server, start_s3_server

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MINSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Progress bars off, so test output stays readable even from a terminal.
os.environ.setdefault("MINSEG_NO_PROGRESS", "1")
# Ray Train's controller checks its workers every 2 s and starts a spot-preemption watcher actor per run: the
# suite's members train for seconds, dozens of times, on machines that are never preempted. Set before any Ray
# starts, so Ray's own processes and the CLI's subprocesses inherit them.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Two pytest-xdist workers share the 2 cores: torch's intra-op threads in each test process (and in the CLI
# subprocesses tests start) only contend, spinning (suite 960 s -> 915 s in one measurement). Ray's
# fractional-CPU workers get one thread anyway.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Session fixtures that train: every test using one runs on the same pytest-xdist worker (the rest of the
# suite is spread over the workers), so the training happens once per run, not once per worker.
_SHARED_RUNS = ("trained_ensemble",)


# Scheduling only, never selection: the suite's longest work, longest first (in-suite seconds on 2 cores from
# --durations, 2026-12-06), so the xdist workers start it first and the many short tests fill the end (the
# longest-processing-time rule; in collection order, tests/train/ came last and one worker ran its long tests alone
# while the other had finished). An entry is a test-id prefix or an xdist group; what is not listed keeps its
# collection order after these. A stale list only costs time.
_LONGEST_FIRST = (
    "trained_ensemble",  # the shared training run (~210 s) and the ~30 tests on it (~130 s)
    "tests.geo.test_prospect",  # the synthetic survey's job and its resume (~260 s)
    "tests.inference.test_multinode",  # a two-node cluster and a job on it (~150 s)
    "tests.train.test_pretrained_training",  # a training run with a worker killed (~120 s)
    "tests.geo.test_raster_evidence",  # a prospect job from the CLI (~110 s)
    "tests.test_demo",  # the demo, then run again (~110 s)
    "tests.ensemble.test_channels_pipeline",  # members on six-channel scenes (~105 s)
    "tests/test_console.py",  # minseg train in a terminal, Ctrl-C included (~150 s)
    "tests/inference/test_segment.py",  # its segmentation runs (~340 s)
    "tests/train/test_train_ensemble.py",
    "tests/train/test_tasks.py",
    "tests/train/test_paper_configs.py",
    "tests/data/test_real_data.py",
)


def _run_order(item) -> int:
    marker = item.get_closest_marker("xdist_group")
    group = (marker.args[0] if marker.args else marker.kwargs.get("name")) if marker else None
    for rank, entry in enumerate(_LONGEST_FIRST):
        if entry == group or item.nodeid.startswith(entry):
            return rank
    return len(_LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep tests that share an expensive fixture on one xdist worker (``--dist loadgroup``, pyproject.toml):
    a session training run (``_SHARED_RUNS``) is one group, and a test module whose tests share a
    module-scoped fixture (a demo run, a trained ensemble, a two-node cluster) is a group of its own. Then the
    longest work first (``_LONGEST_FIRST``; pyproject.toml turns xdist's own reordering, by group size, off)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group"):
            continue
        shared = [name for name in _SHARED_RUNS if name in info.name2fixturedefs]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
        elif any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=_run_order)  # stable: collection order within a rank


@pytest.fixture
def minseg_events():
    """The records minseg's loggers emit during a test, captured on the ``minseg`` logger itself at INFO: pytest's
    caplog listens on the root logger, which misses them once an in-process ``main()`` (configure_logging) in the
    same worker stopped them propagating."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger, handler = logging.getLogger("minseg"), Keep(logging.INFO)
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI and developer machines have ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    yield server
    server.stop()


@dataclass
class S3Context:
    server: S3Server
    bucket: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def settings(self, **overrides):
        from minseg.io.config import StorageSettings

        values = dict(endpoint_url=self.server.endpoint, multipart_threshold_mib=5, multipart_part_size_mib=5)
        values.update(overrides)
        return StorageSettings(**values)

    def storage(self, **overrides):
        from minseg.io.storage import Storage

        return Storage(self.settings(**overrides))


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Context:
    """Credentials in the environment (as users provide them) and a fresh bucket."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"minseg-{uuid.uuid4().hex[:12]}"
    context = S3Context(s3_server, bucket)
    context.storage().client.create_bucket(Bucket=bucket)
    return context


_RAY_START_ERROR: list[str] = []


def _object_store() -> dict:
    """A fixed-size object store for each Ray instance (pytest-xdist starts one per worker; the suite's data is
    small): 2 GiB where /dev/shm has room for two of them, 1 GiB otherwise. Ray's own default, 30 % of the
    machine's memory, falls back to a file in /tmp where /dev/shm is small (containers), which then takes that
    much disk per worker as objects are written: CI's disk can be small."""
    import shutil

    gib = 1024**3
    try:
        room = shutil.disk_usage("/dev/shm").free
    except OSError:
        room = 0
    return {"object_store_memory": 2 * gib if room >= 4 * gib else gib}


def start_test_ray(attempts: int = 2):
    """A local, isolated Ray for the session. A loaded machine can take longer than the 30 s Ray 2.60
    waits for the node to register (fixed in ray/_private/node.py, no setting): try once more before
    giving up."""
    import ray

    last = None
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
                     configure_logging=False, **_object_store())
            return ray
        except Exception as exc:  # noqa: BLE001 (Ray raises several kinds here; we retry once whatever it is)
            last = exc
            ray.shutdown()
    raise RuntimeError(f"Ray did not start after {attempts} attempts: {type(last).__name__}: {last}")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (start-up is slow here). If Ray cannot start,
    the first test that needs it fails with the reason and every later one is skipped with one line."""
    import ray

    if _RAY_START_ERROR:
        pytest.skip(f"Ray could not start (see the first failing test): {_RAY_START_ERROR[0]}")
    if not ray.is_initialized():
        try:
            start_test_ray()
        except RuntimeError as exc:
            _RAY_START_ERROR.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_sections(ray_session, tmp_path_factory):
    """Eight 96x96 synthetic polished sections with masks (paired layout), shared by the session."""
    from minseg.synth.config import SectionsSynth
    from minseg.synth.dataset import write_section_dataset

    root = tmp_path_factory.mktemp("sections")
    write_section_dataset(str(root), SectionsSynth(count=8, height=96, width=96), seed=1, task_cpus=0.25)
    return root


@pytest.fixture(scope="session")
def trained_ensemble(synthetic_sections, tmp_path_factory):
    """One training run shared by the training and the evaluation tests (training is the suite's slowest step):
    three tiny members that finish (a Res-UNet with an STN and CE + Dice, a VGG16 U-Net trained data-parallel on
    two workers, a Half U-Net with focal loss on a bootstrap sample of the images) and two that fail (one at run
    time, one before starting); a frozen stage then an open one (3 epochs); 4 / 2 / 2 images for train / val / test.

    Returns (config, {member: MemberResult}, run folder)."""
    from minseg.train.ensemble import train_ensemble
    from tests.train.conftest import TINY, training_config

    members = [
        {"name": "resunet", "model": "res_unet", "model_options": {**TINY, "stn": True}, "loss": {"name": "ce_dice"}},
        {"name": "vgg", "model": "vgg16_unet", "model_options": TINY,
         "scaling": {"workers": 2, "cpus_per_worker": 0.25}},
        {"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25}, "loss": {"name": "ce_focal"},
         "bagging": {"fraction": 1.0}},  # a bootstrap sample of the training images
        # fails at run time: a learning rate of 1e20 turns the loss to NaN by the second step
        {"name": "diverges", "model": "res_unet", "model_options": TINY, "optimizer": {"lr": 1e20},
         "stages": [{"epochs": 1, "batch_size": 2}]},
        # fails before starting: an option the model does not have
        {"name": "typo", "model": "unet", "model_options": {"widht": 0.1}},
    ]
    output = tmp_path_factory.mktemp("runs")
    config = training_config(synthetic_sections, output, "ens", members,
                             data={"split": {"train": 0.5, "val": 0.25, "test": 0.25}})
    results = train_ensemble(config)
    return config, {r.member: r for r in results}, output / "ens"
