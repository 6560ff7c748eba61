"""`minseg demo` end to end on a tiny version of configs/demo.yaml, run twice as the README invites."""

import json
from pathlib import Path

import yaml

from minseg.cli import DEFAULT_DEMO_CONFIG, main


def tiny_demo_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(DEFAULT_DEMO_CONFIG.read_text())
    config["synth"]["sections"].update(count=6, height=96, width=96)
    config["synth"]["slide"].update(height=600, width=600, tile=256)
    config["synth"]["survey"].update(n_samples=100)
    config["training"]["defaults"]["stages"] = [{"epochs": 1, "batch_size": 8}]
    config["training"]["members"] = config["training"]["members"][1:]  # two members
    config["evaluation"].update(tile=64, overlap=16)
    config["segment"].update(actors=1, block=512)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_demo_runs_twice_reusing_its_members_and_fresh_retrains(ray_session, tmp_path, capsys):
    path, out = tiny_demo_config(tmp_path), tmp_path / "demo"
    assert main(["demo", "-c", str(path), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "minseg demo finished" in first and "Reusing" not in first
    run = out / "tiny-ensemble"
    pointers = {p: p.read_text() for p in run.glob("members/*/checkpoints/best.json")}
    assert len(pointers) == 2 and (run / "demo_inputs.json").exists()
    assert (run / "segment" / "slides" / "synthetic_slide" / "truth_comparison.json").exists()

    assert main(["demo", "-c", str(path), "--out", str(out)]) == 0  # the README's command, again
    second = capsys.readouterr().out
    assert f"Reusing the members a previous demo trained in {run}" in second and "minseg demo finished" in second
    assert {p: p.read_text() for p in pointers} == pointers  # not retrained
    members = json.loads((run / "members.json").read_text())["members"]
    assert all(m["status"] == "done" for m in members)

    checkpoint = next(iter(pointers))
    assert main(["demo", "-c", str(path), "--out", str(out), "--fresh", "--set", "segment=null",
                 "--set", "evaluation=null"]) == 0
    third = capsys.readouterr().out
    assert f"Retraining: removing the previous demo run in {run} (--fresh)" in third
    assert not (run / "segment").exists() and checkpoint.exists()  # the old outputs went, new members trained
