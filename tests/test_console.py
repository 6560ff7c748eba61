"""What a user sees: a training run's console holds minseg's lines, not Ray's, Ray Data's or Tune's;
and it runs in its own Ray instance even while another one (this test session's) is up. The run trains the
classification task (ConvNeXt + ECA on class folders)."""

import json
import os
import re
import subprocess
import sys

import yaml

from tests.data.helpers import write_class_folders

# every line on stderr is one of minseg's log lines; on stdout, the members table (header, rule, one row a member)
MINSEG_LOG = re.compile(r"^\d\d:\d\d:\d\d [A-Z]+ +minseg[.\w]*: event=[\w.]+")
TABLE_LINE = re.compile(r"^(member +fold +model .*|-+|convnext +convnext_eca +done .*|)$")


def test_training_console_is_minseg_s_own(tmp_path):
    """A classifier trained from the CLI (ConvNeXt + ECA on class folders): minseg's lines only, and the run's
    members table and metrics are what a classification run reports."""
    write_class_folders(tmp_path / "cls")
    config = {
        "run": {"name": "console", "output_uri": str(tmp_path), "seed": 0},
        "ray": {"task_cpus": 0.25, "num_cpus": 2},
        "data": {"sources": [{"uri": str(tmp_path / "cls")}], "tiling": {"size": 32}, "cache": "auto",
                 "augmentation": {"mode": "dihedral"}, "split": {"train": 0.66, "val": 0.34, "test": 0.0}},
        "training": {"members": [{
            "name": "convnext", "model": "convnext_eca", "model_options": {"width": 0.125, "depth": "tiny"},
            "stages": [{"epochs": 2, "batch_size": 4}], "optimizer": {"lr": 0.002},
            "scaling": {"cpus_per_worker": 0.25}, "checkpoint_metric": "accuracy", "max_failures": 0}]},
    }
    path = tmp_path / "console.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MINSEG_VERBOSE", "MINSEG_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-m", "minseg", "train", "--config", str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])
    # what is not minseg's (Ray's worker lines, Tune's trial tables and warnings, Ray Data's plans, tracebacks)
    others = ([line for line in done.stderr.splitlines() if not MINSEG_LOG.match(line)]
              + [line for line in done.stdout.splitlines() if not TABLE_LINE.match(line)])
    assert not others, "\n".join(others[:10])
    text = "\n".join(console)
    assert "event=ray.ready" in text and "logs=" in text  # where Ray's own output went
    assert text.count("event=train.epoch member=convnext") == 2  # one line per epoch, from the driver
    assert "convnext" in done.stdout and "done" in done.stdout  # the members table
    assert len(console) < 40, "\n".join(console)

    (row,) = json.loads((tmp_path / "console" / "members.json").read_text())["members"]
    assert row["status"] == "done" and row["metric"] == "accuracy" and 0.0 <= row["best_value"] <= 1.0
    metrics = json.loads(open(f"{row['best_checkpoint']}/metrics.json").read())
    assert metrics["classes"] == ["bright", "dark"] and "mean_precision" in metrics and "f1" in metrics
