"""What a user sees: a training run's console holds minseg's lines, not Ray's, Ray Data's or Tune's;
and it runs in its own Ray instance even while another one (this test session's) is up."""

import os
import re
import subprocess
import sys

import yaml

from tests.train.conftest import training_config

# every line on stderr is one of minseg's log lines; on stdout, the members table (header, rule, one row a member)
MINSEG_LOG = re.compile(r"^\d\d:\d\d:\d\d [A-Z]+ +minseg[.\w]*: event=[\w.]+")
TABLE_LINE = re.compile(r"^(member +fold +model .*|-+|halfunet +half_unet +done .*|)$")


def test_training_console_is_minseg_s_own(synthetic_sections, tmp_path):
    config = training_config(synthetic_sections, tmp_path, "console", [
        {"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25},
         "stages": [{"epochs": 2, "batch_size": 4}]}],
        ray={"num_cpus": 2})  # its own local instance, as a user's run on this machine
    path = tmp_path / "console.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MINSEG_VERBOSE", "MINSEG_LOG_LEVEL", "MINSEG_LOG_FORMAT")}
    done = subprocess.run([sys.executable, "-m", "minseg", "train", "--config", str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])
    # what is not minseg's (Ray's worker lines, Tune's trial tables and warnings, Ray Data's plans, tracebacks)
    others = ([line for line in done.stderr.splitlines() if not MINSEG_LOG.match(line)]
              + [line for line in done.stdout.splitlines() if not TABLE_LINE.match(line)])
    assert not others, "lines not minseg's on the console:\n" + "\n".join(others[:10])
    text = "\n".join(console)
    assert "event=ray.ready" in text and "logs=" in text  # where Ray's own output went
    assert text.count("event=train.epoch member=halfunet") == 2  # one line per epoch, from the driver
    assert "halfunet" in done.stdout and "done" in done.stdout  # the members table
    assert len(console) < 40, "\n".join(console)
