"""A real two-node Ray cluster on 127.0.0.1 (``ray start`` head + worker, each with its own temp folder and
ports, token authentication on), a segmentation job sent with ``ray job submit --working-dir``: its blocks
run on both nodes, its labels equal a local run's bit for bit, and a relative output is refused before any
work. Only the processes this test started are stopped (found by their temp folders), never others'.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_processes_under(folder: str) -> None:
    """Terminate every process whose command line names ``folder`` (this cluster's GCS, raylets, dashboard,
    agents, workers), then kill what is left after a grace period."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(parent.pid for parent in me.parents())}

    def ours():
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if process.pid not in spared and any(folder in arg for arg in process.info["cmdline"] or []):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    for process in ours():
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(ours(), timeout=15)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def two_node_cluster():
    """(dashboard address, environment for Ray commands); stopped after the module's tests."""
    if not Path(RAY).exists():
        pytest.fail(f"{RAY} is missing: the tests need ray[default] (pip install -e '.[test]')")
    folder = tempfile.mkdtemp(prefix="mn", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH="")
    # `ray start --head` records its address for `ray.init("auto")` callers on this machine: put back what was there
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    recorded = current.read_bytes() if current.exists() else None
    try:
        for _ in range(3):  # a free port can be taken before Ray binds it (another test worker's Ray)
            gcs, dashboard, client, *agents = _free_ports(7)
            common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
            head = [RAY, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--ray-client-server-port={client}",
                    f"--temp-dir={folder}/h", f"--dashboard-agent-listen-port={agents[0]}",
                    f"--dashboard-agent-grpc-port={agents[1]}", *common]
            worker = [RAY, "start", f"--address=127.0.0.1:{gcs}", f"--temp-dir={folder}/w",
                      f"--dashboard-agent-listen-port={agents[2]}", f"--dashboard-agent-grpc-port={agents[3]}", *common]
            for command in (head, worker):
                started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
                if started.returncode != 0:
                    break
            if started.returncode == 0:
                break
            _stop_processes_under(folder)  # what did start, before trying other ports
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}", env, folder
    finally:
        _stop_processes_under(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if recorded is None:
            current.unlink(missing_ok=True)
        else:
            current.write_bytes(recorded)


def _submit(address: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", f"--address={address}", f"--working-dir={ROOT}", "--entrypoint-num-cpus=0",
               "--", sys.executable, "jobs/segment_slides.py", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _arrays(output: Path, slide: str) -> list[np.ndarray]:
    """Every level of the labels and of the uncertainty."""
    from tests.inference.test_segment import zarr_levels

    return zarr_levels(output / slide) + zarr_levels(output / slide, "uncertainty")


def test_a_job_submitted_to_two_nodes_uses_both_and_matches_a_local_run(two_node_cluster, ray_session, manifests,
                                                                        test_slides, tmp_path):
    address, env, folder = two_node_cluster
    # two actors of 0.75 CPU cannot share a 1-CPU node: the blocks must spread over both nodes
    options = ["--manifest", manifests["soft"], "--block", "128", "--set", "segment.output_tile=64",
               "--set", "segment.preview_max_side=128", "--set", "segment.actors=2",
               "--set", "segment.cpus_per_actor=0.75", "--set", "segment.read_cpus=0.125"]
    relative = _submit(address, env, *options, "--out", "relative_out", test_slides["section"])
    said = relative.stdout + relative.stderr
    assert relative.returncode != 0 and "lies in Ray's temporary copy of --working-dir" in said, said[-3000:]

    remote = tmp_path / "remote"
    started = time.monotonic()
    done = _submit(address, env, *options, "--out", str(remote), test_slides["section"])
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "event=ray.preflight nodes=2" in done.stdout + done.stderr
    summary = json.loads((remote / "run_summary.json").read_text())
    assert [s["slide"] for s in summary["done"]] == ["section"] and summary["blocks"] == 6
    assert len(summary["blocks_per_node"]) == 2, summary["blocks_per_node"]
    assert time.monotonic() - started < 600

    from tests.inference.test_segment import run

    assert run(manifests["soft"], [test_slides["section"]], tmp_path / "local", block=256, actors=1).done
    remote_arrays, local_arrays = _arrays(remote, "section"), _arrays(tmp_path / "local", "section")
    assert len(remote_arrays) == len(local_arrays) > 2
    for remote_array, local_array in zip(remote_arrays, local_arrays):
        assert remote_array.dtype == np.uint8 and np.array_equal(remote_array, local_array)
