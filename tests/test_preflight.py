"""The cluster preflight: what a job's config reads and writes locally, and a real check on Ray's nodes."""

import subprocess
import sys

import pytest

from minseg.preflight import SHIP_HINT, ClusterPaths, ClusterSetupError, job_paths, preflight


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


def test_a_node_that_cannot_import_a_module_fails_the_preflight_naming_it(ray_session, tmp_path, monkeypatch):
    """A module this driver imports but Ray's worker processes cannot (their sys.path lacks it): the real
    situation of a cluster whose workers lack minseg, on this one-node cluster."""
    (tmp_path / "driver_only_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_module  # noqa: F401  (the driver has it)

    preflight(ClusterPaths(), timeout_s=120)  # everything minseg needs is there
    with pytest.raises(ClusterSetupError) as caught:
        preflight(ClusterPaths(), timeout_s=120, modules=("minseg", "driver_only_module"))
    message = str(caught.value)
    assert message.startswith("the cluster cannot run this job: node 127.0.0.1") or "node " in message
    assert "cannot import driver_only_module (ModuleNotFoundError" in message and SHIP_HINT in message
    assert "\n" not in message and ClusterSetupError.exit_code == 2


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
