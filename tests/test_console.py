"""What a user sees: a training run's console holds minseg's lines, not Ray's, Ray Data's or Ray Train's;
and it runs in its own Ray instance even while another one (this test session's) is up. Ctrl-C stops it cleanly."""

import os
import re
import subprocess
import sys

import yaml

from minseg.train.ensemble import SCORES_NOTE
from tests.train.conftest import training_config

# every line on stderr is one of minseg's log lines; on stdout, the members table (header, rule, one row a member,
# its note)
MINSEG_LOG = re.compile(r"^\d\d:\d\d:\d\d [A-Z]+ +minseg[.\w]*: event=[\w.]+")
TABLE_LINE = re.compile(r"^(member +fold +model .*|-+|halfunet +half_unet +done .*|"
                        r"diverges +half_unet +failed .* member diverges: loss became nan at epoch 1, step \d+; .*|)$")
# README ("What the console shows"): Ray's node manager sends this to every driver and no setting silences it
RAYLET_NOTICE = re.compile(r"^\S*\(raylet\)\S* WARNING: \d+ PYTHON worker processes have been started on node")


def own_run(synthetic_sections, tmp_path, name: str, epochs: int, diverging: bool = False):
    """A one-member training config written to ``<name>.yaml`` for ``minseg train`` in a process of its own, with
    its own local Ray instance (as a user's run on this machine), and that process's environment (none of the
    test session's Ray address or minseg logging settings); ``diverging``: with a second member whose loss turns
    NaN at its first steps (a failed member). Returns (config path, environment)."""
    members = [{"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25},
                "stages": [{"epochs": epochs, "batch_size": 4}]}]
    if diverging:
        members.append({**members[0], "name": "diverges", "optimizer": {"lr": 1e20}})
    config = training_config(synthetic_sections, tmp_path, name, members, ray={"num_cpus": 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MINSEG_VERBOSE", "MINSEG_LOG_LEVEL", "MINSEG_LOG_FORMAT")}
    return path, env


def test_training_console_is_minseg_s_own(synthetic_sections, tmp_path):
    """A failed member's traceback (once Tune's, with its "Trials did not complete") reached the console beside the
    members table's row saying the same, and the run exited 0 with a member failed; now exit 1, as segment's failed
    slides, the traceback kept in the member's error.txt."""
    path, env = own_run(synthetic_sections, tmp_path, "console", epochs=2, diverging=True)
    done = subprocess.run([sys.executable, "-m", "minseg", "train", "--config", str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    console = (done.stdout + done.stderr).splitlines()
    failed = ("minseg: 1 of 2 members failed: diverges (why: the members table); the other members' checkpoints are "
              "complete (minseg evaluate uses them)")
    assert done.returncode == 1 and failed in done.stderr.splitlines(), "\n".join(console[-40:])
    # what is not minseg's (Ray's worker lines, warnings and tracebacks, Ray Data's plans; once Tune's trial tables)
    others = ([line for line in done.stderr.splitlines() if not MINSEG_LOG.match(line) and line != failed]
              + [line for line in done.stdout.splitlines() if not TABLE_LINE.match(line)
                 and line not in SCORES_NOTE.splitlines() and not RAYLET_NOTICE.match(line)])
    assert not others, "lines not minseg's on the console:\n" + "\n".join(others[:10])
    text = "\n".join(console)
    assert "event=ray.ready" in text and "logs=" in text  # where Ray's own output went
    assert text.count("event=train.epoch member=halfunet") == 2  # one line per epoch, from the driver
    last_epoch = max(i for i, line in enumerate(console) if "event=train.epoch member=halfunet epoch=2" in line)
    assert last_epoch < next(i for i, line in enumerate(console) if "event=train.member.done member=halfunet" in line)
    started = [i for i, line in enumerate(console) if "event=train.member.started member=halfunet" in line]
    assert len(started) == 1 and started[0] < min(i for i, line in enumerate(console) if "train.epoch member=halfunet"
                                                  in line)  # when its workers started, before its first epoch
    assert "halfunet" in done.stdout and "done" in done.stdout  # the members table
    assert "diverges" in done.stdout and "failed" in done.stdout
    assert len(console) < 45, "\n".join(console)
    error = (tmp_path / "console" / "members" / "diverges" / "error.txt").read_text()
    assert error.startswith("Traceback") and "loss became nan at epoch 1" in error
    assert not (tmp_path / "console" / "members" / "halfunet" / "error.txt").exists()


def test_ctrl_c_stops_training_with_exit_130_and_says_how_to_continue(synthetic_sections, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the foreground process group) once a member has written a checkpoint: the job
    stops within seconds, exit 130, one line saying --resume continues, no traceback; nothing marks the member
    failed nor advises Tuner.restore (as Tune did); the checkpoint it wrote stays whole; its Ray instance is shut
    down."""
    import json
    import signal
    import time

    path, env = own_run(synthetic_sections, tmp_path, "stopped", epochs=30)
    pointer = tmp_path / "stopped" / "members" / "halfunet" / "checkpoints" / "last.json"
    job = subprocess.Popen([sys.executable, "-m", "minseg", "train", "--config", str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not pointer.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pointer.exists(), "no checkpoint was written"
        os.killpg(job.pid, signal.SIGINT)
        interrupted = time.monotonic()
        out, err = job.communicate(timeout=120)
        stopped_in = time.monotonic() - interrupted
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, err[-3000:]
    assert "minseg: interrupted (what finished is kept: the same command with --resume continues)" in err
    assert "Traceback" not in out + err and "Tuner.restore" not in out + err
    ours = re.compile(r"\d\d:\d\d:\d\d [A-Z]+ +minseg\.|minseg: ")
    foreign = [line for line in err.splitlines() if line and not ours.match(line)]
    assert not foreign, "\n".join(foreign)  # none of Ray's shutdown lines
    assert stopped_in < 60, f"{stopped_in:.0f} s to stop"
    last = json.loads(pointer.read_text())
    assert (pointer.parent / last["dir"] / "model.pt").stat().st_size > 0
    member = pointer.parent.parent
    assert not (member / "result.json").exists() and not (member / "error.txt").exists()  # not recorded as failed
    session = re.search(r"logs=(\S+)", err).group(1)  # where this job's Ray instance kept its logs
    deadline = time.monotonic() + 20  # Ray's daemons end a moment after the driver
    while (left := subprocess.run(["pgrep", "-f", session.split("/logs")[0].rstrip("/")], capture_output=True,
                                  text=True).stdout.strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes of the job still running: {left}"


def test_sigterm_ends_a_command_as_ctrl_c_does_with_exit_143(tmp_path):
    """SIGTERM to the driver alone (``ray job stop``, ``kill``, a scheduler's cancel) while Ray Data tasks run: one
    line of minseg's and exit 143. Ray's handler (set by ray.init) ended it with exit 15 and no line of minseg's,
    Python's without a word; Ray's ``ray.get`` turns the handler's exception into a plain KeyboardInterrupt, so the
    CLI asks the runtime what stopped it."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MINSEG_VERBOSE", "MINSEG_LOG_LEVEL", "MINSEG_LOG_FORMAT")}
    job = subprocess.Popen([sys.executable, "-m", "minseg", "synth", "sections", "--out", str(tmp_path / "s"),
                            "--set", "synth.sections={count: 400, height: 256, width: 256}", "--set", "ray.num_cpus=2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "s").rglob("section_*.png")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, f"synth ended before it could be stopped: {job.communicate()[1][-3000:]}"
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "minseg: terminated (SIGTERM)", err[-3000:]
    assert "Traceback" not in out + err
    ours = re.compile(r"\d\d:\d\d:\d\d [A-Z]+ +minseg\.|minseg: ")
    assert not [line for line in err.splitlines() if line and not ours.match(line)], err[-3000:]  # none of Ray's
    # the run cut short is rerun, not refused as someone else's folder (its records are written first)
    again = subprocess.run([sys.executable, "-m", "minseg", "synth", "sections", "--out", str(tmp_path / "s"),
                            "--set", "synth.sections={count: 2, height: 64, width: 64}", "--set", "ray.num_cpus=2"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "s" / "sections" / "images").iterdir()) == [
        "section_00000.png", "section_00001.png"]
