"""`minseg demo` end to end on a tiny version of configs/demo.yaml, run twice as the README invites."""

import json
from pathlib import Path

import pytest
import yaml

from minseg.cli import DEFAULT_DEMO_CONFIG, main
from tests.support.documents import every_record_is_strict_json


def tiny_demo_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(DEFAULT_DEMO_CONFIG.read_text())
    config["synth"]["sections"].update(count=6, height=96, width=96)
    config["synth"]["slide"].update(height=600, width=600, tile=256)
    config["synth"]["survey"].update(n_samples=100)
    config["training"]["defaults"]["stages"] = [{"epochs": 1, "batch_size": 8}]
    assert len(config["training"]["members"]) == 2  # the demo's own two members, one epoch each
    config["evaluation"].update(tile=64, overlap=16)
    config.pop("segment")  # segmenting the slide is tested on its own (tests/inference); here: training reused
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def first_demo(ray_session, tmp_path_factory):
    """A first tiny demo run: (config path, output folder, its run folder, its members' best.json pointers)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    path, out = tiny_demo_config(tmp_path), tmp_path / "demo"
    assert main(["demo", "-c", str(path), "--out", str(out)]) == 0
    run = out / "tiny-ensemble"
    pointers = {p: p.read_text() for p in run.glob("members/*/checkpoints/best.json")}
    assert len(pointers) == 2 and (run / "demo_inputs.json").exists()
    assert (run / "evaluation" / "ensemble" / "manifest.json").exists()
    assert every_record_is_strict_json(out, skip=("ray",)) > 20  # data, training, evaluation, prospectivity
    return path, out, run, pointers


def test_the_demo_runs_again_reusing_its_members(first_demo, capsys):
    """The README's demo command a second time: exit 0, the members a previous run trained from the same data and
    settings reused (and said so), evaluation and the rest redone."""
    path, out, run, pointers = first_demo
    capsys.readouterr()
    assert main(["demo", "-c", str(path), "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert f"Reusing the members a previous demo trained in {run}" in second and "minseg demo finished" in second
    assert {p: p.read_text() for p in pointers} == pointers  # not retrained
    members = json.loads((run / "members.json").read_text())["members"]
    assert all(m["status"] == "done" for m in members)


def test_the_demo_refuses_to_retrain_over_a_run_it_did_not_write(tmp_path, capsys):
    """``minseg demo --config <a recipe>`` writes where the recipe's own run lives: a run without the demo's
    record is refused untouched, before anything is written, not removed as a 'previous demo run'."""
    path, out = tiny_demo_config(tmp_path), tmp_path / "project"
    run = out / "tiny-ensemble"
    (run / "members" / "unet-a").mkdir(parents=True)
    (run / "members.json").write_text('{"members": []}')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["demo", "-c", str(path), "--out", str(out)]) == 2
    assert "holds a training run the demo did not write (no demo_inputs.json)" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_a_rank_key_of_no_synthetic_mineral_is_refused_before_the_demo_trains(tmp_path, capsys):
    """The demo's config lists no classes (it trains on the synthetic minerals): ``evaluation.rank_key:
    iou:nothing`` passed ``config validate`` and stopped the demo only after synthesis and training (minutes on
    the default config). Both say it now, before anything is written; a mineral the generator paints passes."""
    path, out = tiny_demo_config(tmp_path), tmp_path / "project"
    for command in (["config", "validate", str(path)], ["demo", "-c", str(path), "--out", str(out)]):
        assert main([*command, "--set", "evaluation.rank_key=iou:nothing"]) == 2
        assert "evaluation.rank_key: unknown class 'nothing' in 'iou:nothing'; classes: background, pyrite" in \
            capsys.readouterr().err
    assert not out.exists()
    assert main(["config", "validate", str(path), "--set", "evaluation.rank_key=iou:pyrrhotite"]) == 0
    # a config without a synth section is no demo's: its classes are its data's, never the synthetic minerals
    plain = yaml.safe_load(path.read_text())
    plain.pop("synth", None)
    path.write_text(yaml.safe_dump(plain))
    main(["config", "validate", str(path), "--set", "evaluation.rank_key=iou:nothing"])
    assert "classes: background, pyrite" not in capsys.readouterr().err


def test_the_demo_and_synth_refuse_folders_of_other_commands_and_a_geologist_s_own(tmp_path, capsys):
    """``demo --out`` a finished prospect output wrote the demo's folders beside the maps, and ``demo`` / ``synth``
    into a folder holding someone's ``survey/samples.csv`` would write over it: both refused, untouched."""
    path = tiny_demo_config(tmp_path)
    prospect, own = tmp_path / "prospect", tmp_path / "own"
    prospect.mkdir()
    (prospect / ".minseg-prospect").write_text("{}")
    (prospect / "summary.json").write_text("{}")
    (own / "survey").mkdir(parents=True)
    (own / "survey" / "samples.csv").write_text("sample_id,x,y\n")
    for argv, message in [(["demo", "-c", str(path), "--out", str(prospect)],
                           "holds the outputs of minseg prospect (.minseg-prospect); minseg demo would write over"),
                          (["synth", "--out", str(prospect)], "holds the outputs of minseg prospect"),
                          (["demo", "-c", str(path), "--out", str(own)], "holds survey/ that minseg did not write"),
                          (["synth", "survey", "--out", str(own)], "holds survey/ that minseg did not write")]:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, argv
    # an earlier synth's manifest vouches for the products it names, not for a survey/ someone put beside them
    slide = tmp_path / "slide"
    assert main(["synth", "slide", "--out", str(slide), "--set", "synth.slide={height: 64, width: 80, tile: 16}"]) == 0
    (slide / "survey").mkdir()
    (slide / "survey" / "samples.csv").write_text("mine")
    assert main(["synth", "survey", "--out", str(slide)]) == 2
    assert "holds survey/ that minseg did not write" in capsys.readouterr().err
    assert main(["synth", "slide", "--out", str(slide), "--set", "synth.slide={height: 64, width: 80, tile: 16}"]) == 0
    assert (slide / "survey" / "samples.csv").read_text() == "mine"


@pytest.mark.slow  # a third tiny demo run (~60 s): retraining is training as on a first run
def test_demo_fresh_retrains(first_demo, capsys):
    path, out, run, pointers = first_demo
    capsys.readouterr()
    assert main(["demo", "-c", str(path), "--out", str(out), "--fresh", "--set", "evaluation=null"]) == 0
    third = capsys.readouterr().out
    assert f"Retraining: removing the previous demo run in {run} (--fresh)" in third
    assert not (run / "evaluation").exists() and all(p.exists() for p in pointers)  # old outputs gone, retrained


@pytest.mark.slow  # the README's demo exactly as shipped (~4.5 min on 2 cores)
def test_the_demo_segments_its_slide_well_and_its_ensemble_beats_its_best_member(ray_session, tmp_path, capsys):
    """What a new user sees first: the selected ensemble's slide against the true mask, every class the generator
    paints predicted, and the ensemble (selected on validation) at least as good as its best member alone."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    segment = out / "tiny-ensemble" / "segment"
    ensemble = json.loads((segment / "slides" / "synthetic_slide" / "truth_comparison.json").read_text())
    assert ensemble["miou"] >= 0.80
    assert all(iou > 0.5 for iou in ensemble["iou"]), dict(zip(ensemble["classes"], ensemble["iou"]))
    evaluation = json.loads((out / "tiny-ensemble" / "evaluation" / "ensemble" / "evaluation.json").read_text())
    assert evaluation["selection_split"] == "val"
    if evaluation["selected"].startswith("member:"):  # honest selection may keep a member: then it says so
        assert f"The selection on validation is a single member ({evaluation['selected']})" in printed
        return
    alone = json.loads((segment / "best-member" / "synthetic_slide" / "truth_comparison.json").read_text())
    assert ensemble["miou"] >= alone["miou"]
    assert f"slide mIoU {ensemble['miou']:.3f}; its best member alone" in printed
    assert f": {alone['miou']:.3f} (" in printed
