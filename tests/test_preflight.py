"""The cluster preflight: what a job's config reads and writes locally, and a real check on Ray's nodes."""

import os
import subprocess
import sys

from minseg.preflight import (
    SHARED_HINT,
    SHIP_HINT,
    ClusterPaths,
    _existing_prefix,
    _message,
    answer_problems,
    job_paths,
    path_problems,
    preflight_timeout,
)


def test_job_paths_are_the_local_inputs_of_the_jobs_sections_and_its_outputs():
    from minseg.config import MinsegConfig, validate_config

    config = validate_config({
        "run": {"output_uri": "runs"},
        "data": {"sources": [{"uri": "../shared/data/lumenstone"}, {"uri": "s3://bucket/more.tar"}]},
        "segment": {"slides": ["/mnt/slides/*.tif", "s3://bucket/s.tif"], "output_uri": "/mnt/out",
                    "manifest_uri": "runs/x/manifest.json"},
    }, MinsegConfig, source="test")
    paths = job_paths([config.data, config.segment, "runs/x/manifest.json", None], ["/mnt/out", "s3://b/o", None])
    assert paths.outputs == ("/mnt/out",)
    assert sorted(paths.inputs) == ["../shared/data/lumenstone", "/mnt/slides/*.tif", "runs/x/manifest.json"]


def test_a_node_that_cannot_import_the_jobs_setup_hook_module_is_named_at_once(ray_session, tmp_path):
    """The situation of a cluster whose workers lack minseg, on this one-node cluster: a driver whose job's
    worker setup hook lives in a module only the driver has (as minseg's hook does on such a cluster) joins
    the running cluster; workers running that hook would die, without end. The preflight's probe must skip
    the hook and report the module by name, well within its deadline, in one line."""
    import ray

    (tmp_path / "driver_only_module.py").write_text("def hook():\n    pass\n")
    code = f"""
import sys, time, ray
from minseg.preflight import ClusterPaths, ClusterSetupError, preflight
ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False,
         runtime_env={{"worker_process_setup_hook": "driver_only_module.hook"}})
preflight(ClusterPaths(), timeout_s=120)  # all of minseg's modules import on the node
started = time.monotonic()
try:
    preflight(ClusterPaths(), timeout_s=120, modules=("minseg", "driver_only_module"))
except ClusterSetupError as exc:
    print("ERROR", round(time.monotonic() - started), exc)
"""
    env = dict(os.environ, PYTHONPATH=str(tmp_path))  # the driver has the module; Ray's workers do not
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [text for text in done.stdout.splitlines() if text.startswith("ERROR")]
    assert len(line) == 1, done.stdout + done.stderr[-2000:]
    _, seconds, message = line[0].split(" ", 2)
    assert int(seconds) < 60, "the probe's workers ran the hook and died instead of answering"
    assert message.startswith("the cluster cannot run this job: node ")
    assert "cannot import driver_only_module (ModuleNotFoundError" in message and SHIP_HINT in message


def test_path_rules_and_answers_make_one_line_per_kind_of_problem():
    paths = ClusterPaths(inputs=("/data/slides/*.tif", "in.csv"), outputs=("out", "/shared/out"))
    package = os.getcwd()  # as under ray job submit: the driver runs in Ray's copy of --working-dir
    problems = path_problems(paths, package, workers_pending=False)
    assert problems == ["output 'out' lies in Ray's temporary copy of --working-dir, deleted after the job "
                        "(a relative output path under ray job submit)"]
    assert path_problems(paths, None, workers_pending=False) == []
    waiting = path_problems(ClusterPaths(outputs=("/shared/out",)), None, workers_pending=True)
    assert len(waiting) == 1 and "scales from zero" in waiting[0] and "/shared/out" in waiting[0]
    assert path_problems(ClusterPaths(outputs=("file:///shared/out",)), "/shared", False)  # file:// is a path

    good = {"missing": {}, "versions": {"minseg": "1.0"}, "unseen": []}
    lacking = {"missing": {"minseg": "ModuleNotFoundError: No module named 'minseg'\n\n  (details)"},
               "versions": {}, "unseen": ["/data/slides", "/shared/out/.marker"]}
    old = {"missing": {}, "versions": {"minseg": "0.9"}, "unseen": ["/shared/out/.marker"]}
    answers = [("node a", good), ("node b", lacking), ("node c", lacking), ("node d", old)]
    problems = answer_problems(answers, ["/shared/out/.marker"], "1.0")
    assert problems == [
        "node b, node c: cannot import minseg (ModuleNotFoundError: No module named 'minseg' (details))",
        "node b, node c: does not see /data/slides",
        "node b, node c, node d: does not see the output folder(s) the driver wrote to: /shared/out",
        "node d: runs minseg 0.9, the driver 1.0",
    ]
    message = _message(problems)
    assert "\n" not in message and message.count(SHIP_HINT) == 1 and message.count(SHARED_HINT) == 1

    assert _existing_prefix("/data/slides/**/*.tif") == "/data/slides" and _existing_prefix("*.tif") == "."
    assert preflight_timeout(None, {}) == 120 and preflight_timeout(None, {"pip": {"packages": []}}) == 1200
    assert preflight_timeout(30, {"pip": {}}) == 30


def test_the_probe_runs_where_minseg_cannot_be_imported():
    """The probe is sent by value: a process in which importing minseg fails still runs it."""
    from ray import cloudpickle

    import minseg.preflight as module

    cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(module._probe)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    code = ("import sys, pickle; sys.modules['minseg'] = None\n"  # `import minseg` now raises ImportError
            "probe = pickle.loads(sys.stdin.buffer.read())\n"
            "answer = probe(('minseg', 'json'), ('/',))\n"
            "print(sorted(answer['missing']), answer['unseen'], answer['versions'])")
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "['minseg'] [] {'json': '2.0.9'}"


def test_an_output_the_driver_cannot_write_is_refused_before_any_work(tmp_path):
    """A read-only output folder (or a file where it should be) failed evaluate, score and segment at their end,
    after all the prediction. Probed where the output is, or its nearest existing folder: nothing is left there."""
    from minseg.preflight import ClusterPaths, output_problems

    (tmp_path / "a-file").write_text("x")
    paths = ClusterPaths(outputs=(str(tmp_path / "new" / "deep"), str(tmp_path / "a-file" / "out")))
    assert output_problems(paths) == [f"output '{tmp_path}/a-file/out' cannot be written ({tmp_path}/a-file is a "
                                      "file, not a folder)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no folder made, no probe left
    (tmp_path / "gone-disk").symlink_to(tmp_path / "unmounted")  # its parent is writable, the link leads nowhere
    assert output_problems(ClusterPaths(outputs=(str(tmp_path / "gone-disk" / "out"),))) == [
        f"output '{tmp_path}/gone-disk/out' cannot be written ({tmp_path}/gone-disk is a link to {tmp_path}/unmounted, "
        "which does not exist)"]
    (tmp_path / "gone-disk").unlink()
    if os.geteuid() == 0:  # root writes into read-only folders, not into sysfs
        assert output_problems(ClusterPaths(outputs=("/sys/minseg-out",))) == [
            "output '/sys/minseg-out' cannot be written (/sys: Permission denied)"]
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert output_problems(ClusterPaths(outputs=(str(locked / "out"),))) == [
            f"output '{locked}/out' cannot be written ({locked}: Permission denied)"]
    finally:
        locked.chmod(0o700)
