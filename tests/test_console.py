"""What a user sees: a training run's console holds minseg's lines, not Ray's, Ray Data's or Tune's;
and it runs in its own Ray instance even while another one (this test session's) is up."""

import os
import re
import subprocess
import sys

import yaml

from tests.train.conftest import CLASSES

RAY_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w[\w:()]* pid=\d+")  # a line Ray forwards from a worker or actor
NOISE = ("Trial status", "Starting execution of Dataset", "Execution plan of Dataset", "RayDeprecationWarning",
         "Traceback", "tqdm is not installed", "Failed to query Ray Train Controller")


def test_training_console_is_minseg_s_own(synthetic_sections, tmp_path):
    config = {
        "run": {"name": "console", "output_uri": str(tmp_path), "seed": 0},
        "ray": {"task_cpus": 0.25, "num_cpus": 2},
        "data": {"sources": [{"uri": str(synthetic_sections)}], "classes": CLASSES, "tiling": {"size": 48},
                 "split": {"train": 0.75, "val": 0.25, "test": 0.0}, "cache": True},
        "training": {"members": [{"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25},
                                  "stages": [{"epochs": 2, "batch_size": 4}], "scaling": {"cpus_per_worker": 0.25},
                                  "max_failures": 0}]},
    }
    path = tmp_path / "console.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MINSEG_VERBOSE", "MINSEG_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-m", "minseg", "train", "--config", str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])
    ray_lines = [line for line in console if RAY_LINE.match(line)]
    assert not ray_lines, ray_lines[:5]
    assert not [line for line in console if any(n in line for n in NOISE)]
    text = "\n".join(console)
    assert "event=ray.ready" in text and "logs=" in text  # where Ray's own output went
    assert text.count("event=train.epoch member=halfunet") == 2  # one line per epoch, from the driver
    assert "halfunet" in text and "done" in text  # the members table
    assert len(console) < 40, "\n".join(console)
