import json
import subprocess
import sys

import pytest

from minseg.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minseg", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "synth", "config", "storage", "info", "train", "evaluate", "select", "segment"):
        assert command in result.stdout


def test_config_errors_exit_2_with_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  slide: {tile: 100}\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: synth.slide.tile: " in err and "multiple of 16" in err


def test_config_show_fills_defaults(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("run: {name: x}\n")
    assert main(["config", "show", str(good), "--set", "run.seed=4"]) == 0
    out = capsys.readouterr().out
    assert "seed: 4" in out and "max_attempts: 8" in out


def test_synth_survey_and_storage_commands(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["synth", "survey", "--out", str(out), "--set", "synth.survey.n_samples=50"]) == 0
    assert (out / "survey" / "samples.csv").exists()
    assert not (out / "sections").exists()
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert manifest["config"]["synth"]["survey"]["n_samples"] == 50
    capsys.readouterr()
    assert main(["storage", "ls", str(out / "survey")]) == 0
    assert "lithology.tif" in capsys.readouterr().out
    assert main(["storage", "cat", str(out / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


def test_models_lists_every_learner_with_counts(capsys):
    from minseg.models import list_models

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [e.name for e in list_models()]
    res_unet = next(r for r in rows if r["name"] == "res_unet")
    assert abs(res_unet["params_m"] - 43.93) < 0.01
    assert res_unet["defaults"]["activation"] == "leaky_relu"
    for bad in ("0", "-3", "two"):  # a usage error (exit 2), not a model-building traceback
        with pytest.raises(SystemExit) as stopped:
            main(["models", "--num-classes", bad])
        assert stopped.value.code == 2
    assert "--num-classes: 0 is not at least 1" in capsys.readouterr().err
