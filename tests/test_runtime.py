"""Actor pools the cluster could never hold are refused before Ray Data waits for them forever (as training refuses
members that could never start): evaluation's, score's, segmentation's and prospect prediction's; the runtime env
of the jobs minseg starts or joins."""

import os

import pytest

from minseg.runtime import ResourceError, check_actor_pool

TWO_CPUS = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]


@pytest.mark.parametrize("actors, cpus, gpus, extra, message", [
    (1, 0.5, 1.0, 0.0, "evaluation.gpus_per_actor 1 GPUs"),
    (1, 4.0, 0.0, 0.0, "evaluation.cpus_per_actor 4 CPUs"),
    (3, 0.5, 0.0, 1.75, "plus 1.75 CPUs for the tasks that feed it (evaluation.read_cpus)"),
])
def test_a_pool_the_live_nodes_could_never_hold_is_refused(actors, cpus, gpus, extra, message):
    with pytest.raises(ResourceError) as error:
        check_actor_pool("evaluation", actors, cpus, gpus, extra_cpus=extra, nodes=TWO_CPUS)
    assert message in str(error.value) and "the cluster has 2 CPUs and 0 GPUs" in str(error.value)
    assert "could never start" in str(error.value)


def test_a_pool_that_fits_passes_and_one_actor_must_fit_on_one_node(caplog):
    check_actor_pool("segment", 2, 0.5, 0.0, extra_cpus=0.25, nodes=TWO_CPUS)
    check_actor_pool("segment", 4, 0.5, 0.0, nodes=TWO_CPUS)
    # more actors than the cluster holds at once: Ray Data runs those that fit; said, not refused
    check_actor_pool("segment", 5, 0.5, 0.0, nodes=TWO_CPUS)
    assert "runtime.pool_larger_than_cluster" in caplog.text
    split = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    check_actor_pool("score", 2, 2.0, 0.0, nodes=split)
    with pytest.raises(ResourceError, match="at most 2 CPUs and 0 GPUs on one"):
        check_actor_pool("score", 1, 3.0, 0.0, nodes=split)  # 4 CPUs in all, but no node holds 3


def test_autoscaling_clusters_that_start_empty_turn_the_check_off():
    """No live node can hold a GPU actor until the autoscaler adds one: ``ray.check_resources: false``."""
    from minseg import runtime

    empty = [{"Alive": True, "Resources": {"CPU": 0.0}}]  # a head node that runs no work
    with pytest.raises(ResourceError, match="set ray.check_resources: false on autoscaling clusters"):
        check_actor_pool("segment", 4, 1.0, 1.0, nodes=empty)
    runtime._CHECK_RESOURCES = False  # what init_ray sets from ray.check_resources
    try:
        check_actor_pool("segment", 4, 1.0, 1.0, nodes=empty)
    finally:
        runtime._CHECK_RESOURCES = True
    assert runtime.RaySettings(check_resources=False).check_resources is False


def test_a_minseg_error_inside_a_ray_error_becomes_that_error_alone():
    """Ray keeps only the text of an error raised in an actor's constructor (ActorDiedError: its traceback);
    ``actor_errors`` finds the minseg error's last line and raises it alone; anything else goes on as it is."""
    from minseg.ensemble.runtime import MemberLoadError
    from minseg.runtime import actor_errors, minseg_error_in

    text = ("The actor died because of an error raised in its creation task, ray::MapWorker(...)\nTraceback (most "
            "recent call last):\n  File \"x.py\", line 1, in __init__\n    raise ...\nminseg.ensemble.runtime."
            "MemberLoadError: member 'vgg' (vgg16_unet, /r/model.pt) cannot be loaded: not a readable weights file")
    found = minseg_error_in(RuntimeError(text))
    assert isinstance(found, MemberLoadError) and str(found).startswith("member 'vgg' (vgg16_unet, /r/model.pt)")
    with pytest.raises(MemberLoadError) as error:
        with actor_errors("evaluation actors"):
            try:
                raise ValueError("inner") from MemberLoadError("member 'a': bad")
            except ValueError as exc:
                raise RuntimeError("wrapped") from exc
    assert str(error.value) == "evaluation actors: member 'a': bad"
    with pytest.raises(KeyError):
        with actor_errors("evaluation actors"):
            raise KeyError("not ours")


def test_pipelines_built_in_workers_draw_no_progress_bars(ray_session):
    """Under --verbose the workers' output reaches the console: a pipeline a worker builds itself (a trial task's
    member data) drew one progress bar line per update there, hundreds per member. A driver joining the running
    instance, as ``ray job submit`` drivers do; a value set in the environment is the user's."""
    import subprocess
    import sys

    script = """
import ray, ray.data
from minseg.runtime import RaySettings, init_ray
init_ray(RaySettings(preflight_timeout_s=0))

@ray.remote(num_cpus=0.25)
def pipeline_in_a_worker():
    rows = ray.data.range(40, override_num_blocks=4).map_batches(lambda b: b, batch_size=10, num_cpus=0.25).take_all()
    return len(rows), ray.data.DataContext.get_current().enable_progress_bars

print("result", ray.get(pipeline_in_a_worker.remote()), flush=True)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # the session's local instance made its token (~/.ray/auth_token); a driver joining it must ask for token auth
    env.update(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, RAY_AUTH_MODE="token",
               MINSEG_LOG_LEVEL="debug", MINSEG_NO_PROGRESS="1")
    for setting, expected in ((None, "result (40, False)"), ("0", "result (40, True)"), ("1", "result (40, False)")):
        if setting is not None:
            env["RAY_DATA_DISABLE_PROGRESS_BARS"] = setting
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and expected in done.stdout, (done.stdout + done.stderr)[-3000:]


def test_each_job_gets_its_own_runtime_env(monkeypatch):
    """A new dict per job; a local instance runs no preemption watcher (the same variable as tests/conftest.py)."""
    import json

    from minseg.runtime import worker_runtime_env

    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    first = worker_runtime_env()
    first["env_vars"]["ADDED_BY_RAY"] = "x"
    assert worker_runtime_env()["env_vars"] == {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}  # a cluster: watched
    assert worker_runtime_env(local=True)["env_vars"] == {"RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                                                          "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "0")  # the user's: carried to a joined cluster's workers
    assert worker_runtime_env()["env_vars"] == {"RAY_DATA_DISABLE_PROGRESS_BARS": "0"}
    # a submitted job's runtime env sets them (its driver sees them too): Ray refuses them set twice
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {
        "RAY_DATA_DISABLE_PROGRESS_BARS": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}}}))
    assert "env_vars" not in worker_runtime_env(local=True)


def test_a_ray_that_cannot_start_is_one_line_naming_why(tmp_path):
    """A Ray that could not start (here a temporary folder too deep for Ray's Unix sockets, as on clusters whose
    TMPDIR is a long per-job path) was a Python traceback; an object store larger than the machine, one from Ray's
    memory arithmetic. Now one line each, nothing written (the command's own process, no Ray running in it)."""
    import subprocess
    import sys

    deep = tmp_path / ("t" * max(1, 120 - len(str(tmp_path))))  # Ray's socket paths: at most 107 bytes
    deep.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    command = [sys.executable, "-m", "minseg", "synth", "sections", "--out", str(tmp_path / "out"),
               "--set", "synth.sections.count=2"]
    done = subprocess.run(command, env={**env, "RAY_TMPDIR": str(deep)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("minseg: error: Ray could not start a local instance (its temporary folder: "
                                  "RAY_TMPDIR, else the system's): OSError: ") and "107 bytes" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run([*command, "--set", "ray.object_store_mib=100000000"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(
        "minseg: error: ray.object_store_mib: 100000000 MiB is more than this machine's memory"), done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_ray_shuts_down_at_exit_is_one_line(tmp_path):
    """After a command's error line, Ray's exit hook shuts the instance down (seconds under load); a Ctrl-C then
    printed ~20 lines of "Exception ignored in atexit callback" traceback. Now one line and exit 130. The Ctrl-C
    is an alarm set by the last exit hook to run before minseg's (hooks run last registered first)."""
    import subprocess
    import sys

    script = """
import atexit, signal, sys
from minseg.runtime import RaySettings, init_ray
init_ray(RaySettings(num_cpus=1))

def ctrl_c(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, ctrl_c)
atexit.register(lambda: signal.setitimer(signal.ITIMER_REAL, 0.2))  # lands in the shutdown (about 1 s)
print("minseg: error: the command's own error", file=sys.stderr)
sys.exit(2)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "minseg: interrupted while Ray shut down", done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
