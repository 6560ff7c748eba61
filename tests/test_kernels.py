"""``minseg analyze kernels`` on members whose weights are set by hand."""

import csv
import json

import pytest
import torch

from minseg.analysis.kernels import analyze_kernels, kernel_statistics
from minseg.cli import main
from minseg.ensemble.manifest import write_ensemble
from minseg.models import build_model

CLASSES = {"classes": [{"id": 0, "name": "background", "codes": [0], "color": [0, 0, 0]},
                       {"id": 1, "name": "particle", "codes": [1], "color": [255, 0, 0]}], "ignore_index": 255}


def hand_set(model):
    """Layer 1: every weight 0.005 (all near zero); layer 2: +-0.5 alternating; the rest 0.2."""
    convolutions = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        convolutions[0].weight.fill_(0.005)
        flat = convolutions[1].weight.view(-1)
        flat.copy_(torch.tensor([0.5, -0.5]).repeat(flat.numel() // 2 + 1)[: flat.numel()])
        for module in convolutions[2:]:
            module.weight.fill_(0.2)
    return model


def test_statistics_of_hand_set_kernels():
    model = hand_set(build_model("half_unet", num_classes=2, width=0.25))
    rows = kernel_statistics(model, near_zero=0.01, relative=0.05)
    first, second = rows[0], rows[1]
    assert [r["depth"] for r in rows] == list(range(1, len(rows) + 1))
    assert first["share_near_zero"] == 1.0 and first["mean_abs"] == pytest.approx(0.005)
    assert first["parameters"] == model.state_dict()[f"{first['layer']}.weight"].numel()
    assert second["mean_abs"] == pytest.approx(0.5) and second["share_near_zero"] == 0.0
    assert second["max_abs"] == pytest.approx(0.5) and second["std"] == pytest.approx(0.5, abs=0.01)
    assert all(r["mean"] == pytest.approx(0.2) and r["std"] == pytest.approx(0.0, abs=1e-9) for r in rows[2:])


def test_command_on_a_manifest_and_a_checkpoint(tmp_path, capsys):
    half = hand_set(build_model("half_unet", num_classes=2, width=0.25))
    unet = build_model("unet", num_classes=2, width=0.125)
    manifest = write_ensemble(str(tmp_path / "ens"), [("half", "half_unet", {"width": 0.25}, half),
                                                      ("unet", "unet", {"width": 0.125}, unet)], CLASSES)
    out = tmp_path / "kernels"
    assert main(["analyze", "kernels", manifest, "--out", str(out)]) == 0
    assert "convolution layers of 2 member(s): half, unet" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "kernels.csv")))
    half_rows = [r for r in rows if r["member"] == "half"]
    assert float(half_rows[0]["share_near_zero"]) == 1.0 and float(half_rows[1]["mean_abs"]) == pytest.approx(0.5)
    assert {r["member"] for r in rows} == {"half", "unet"}
    for name in ("half_kernels.png", "unet_kernels.png", "kernels_overview.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one checkpoint directory alone gives the same rows for that member
    report = analyze_kernels([str(tmp_path / "ens" / "members" / "half")], str(tmp_path / "one"))
    assert [r["mean_abs"] for r in report.rows] == pytest.approx([float(r["mean_abs"]) for r in half_rows])
    # again into the first folder with that member alone: the other member's figure does not stay behind; a
    # checkpoint reached twice is analysed once (it was two members, half-1 and half-2)
    half_dir = str(tmp_path / "ens" / "members" / "half")
    assert [r["member"] for r in analyze_kernels([half_dir, half_dir + "/"], str(out)).rows] == \
        [r["member"] for r in report.rows]
    assert not (out / "unet_kernels.png").exists() and (out / "half_kernels.png").exists()
    # the output inside a member's checkpoint directory: its figures would lie among the weights
    assert main(["analyze", "kernels", manifest, "--out", f"{half_dir}/figures"]) == 2
    assert f"--out: {half_dir}/figures lies in the checkpoint directory of member 'half'" in capsys.readouterr().err
    assert not (tmp_path / "ens" / "members" / "half" / "figures").exists()
    for flag, value in (("--near-zero", "nan"), ("--relative", "-1"), ("--bins", "0")):
        assert main(["analyze", "kernels", manifest, "--out", str(out), flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and "out of range" in err  # the one that is wrong, and only it
        assert all(other not in err for other in ("--near-zero", "--relative", "--bins") if other != flag)
    # a name from a hand-edited member.json names a figure in the output folder, not a path (../../x wrote beside
    # the repository)
    described = tmp_path / "ens" / "members" / "half" / "member.json"
    described.write_text(json.dumps({**json.loads(described.read_text()), "name": "../../escape"}))
    analyze_kernels([str(tmp_path / "ens" / "members" / "half")], str(tmp_path / "deep" / "er" / "out"))
    figures = sorted(p.name for p in (tmp_path / "deep" / "er" / "out").glob("*.png"))
    assert len(figures) == 2 and figures[0].startswith("_._.._escape-") and figures[1] == "kernels_overview.png"
    assert not list(tmp_path.glob("**/escape_kernels.png"))
    for name in (123, "\ud800x"):  # not text, or text no figure can show: the file named, exit 2
        described.write_text(json.dumps({**json.loads(described.read_text()), "name": name}))
        assert main(["analyze", "kernels", str(tmp_path / "ens" / "members" / "half"), "--out", str(out)]) == 2
        assert "member.json: not a member description (ValueError: name" in capsys.readouterr().err


def test_sources_that_hold_no_member_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "kernels", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a training run (members.json), an ensemble manifest" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{not json")
    assert main(["analyze", "kernels", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    # a mistyped path, and a checkpoint's weights file given for its folder: each said as it is
    assert main(["analyze", "kernels", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"x")
    assert main(["analyze", "kernels", str(tmp_path / "ckpt" / "model.pt"), "--out", str(tmp_path / "o")]) == 2
    assert f"give the checkpoint directory that holds it ({tmp_path / 'ckpt'})" in capsys.readouterr().err


def test_k_fold_and_prospect_runs(tmp_path):
    """Fold trials are named member@foldK; members trained without validation use their last checkpoint."""
    import json

    from minseg.analysis.kernels import discover
    from minseg.io.storage import Storage

    half = build_model("half_unet", num_classes=2, width=0.25)
    write_ensemble(str(tmp_path / "ens"), [("half", "half_unet", {"width": 0.25, "in_channels": 3}, half)], CLASSES)
    import shutil

    checkpoint = str(tmp_path / "ens" / "members" / "half")
    # the run's layout (minseg.io.runs): fold 1 kept a best epoch, fold 2 trained without validation (last only)
    for fold, pointers in ((1, ("best", "last")), (2, ("last",))):
        folder = tmp_path / "run" / f"fold{fold}" / "members" / "half" / "checkpoints"
        shutil.copytree(checkpoint, folder / "epoch-0002")
        for which in pointers:
            (folder / f"{which}.json").write_text(json.dumps({"dir": "epoch-0002", "uri": "/elsewhere/epoch-0002"}))
    # folds numbered from 1 in the file, as write_members_table writes them (trials 0 and 1: folders fold1, fold2)
    half = {"member": "half", "model": "half_unet"}
    rows = [{**half, "fold": 1, "status": "done", "best_checkpoint": "/elsewhere/epoch-0002"},
            {**half, "fold": 2, "status": "done", "best_checkpoint": None, "last_checkpoint": "/elsewhere"},
            {**half, "fold": None, "status": "failed", "best_checkpoint": None}]
    (tmp_path / "run" / "members.json").write_text(json.dumps({"members": rows}))
    # two checkpoints of one name are numbered; one checkpoint given twice is one member
    shutil.copytree(checkpoint, tmp_path / "other" / "half")
    members = discover([str(tmp_path / "run"), checkpoint, str(tmp_path / "other" / "half"), checkpoint], Storage())
    assert [m.name for m in members] == ["half@fold1", "half@fold2", "half-1", "half-2"]
    report = analyze_kernels([str(tmp_path / "run")], str(tmp_path / "out"))  # in_channels in the options: fine
    assert {r["member"] for r in report.rows} == {"half@fold1", "half@fold2"}


def test_a_second_analysis_replaces_the_first_whole_or_leaves_it_untouched(tmp_path, capsys, monkeypatch, caplog):
    """A break-it pass: with a relative --out the first analysis's other figure stayed beside the second's; a member
    failing midway left its new figure beside the old table; damaged class maps and --bins far too many were
    tracebacks; a finished member without its checkpoint was skipped without a word; a measure folder was written
    into and any *_kernels.png in it deleted."""
    import logging

    half = build_model("half_unet", num_classes=2, width=0.25)
    unet = build_model("unet", num_classes=2, width=0.125)
    manifest = write_ensemble(str(tmp_path / "ens"), [("half", "half_unet", {"width": 0.25}, half),
                                                      ("unet", "unet", {"width": 0.125}, unet)], CLASSES)
    members = tmp_path / "ens" / "members"
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "kernels", manifest, "--out", "k"]) == 0
    (tmp_path / "k" / "mine_kernels.png").write_bytes(b"someone's")  # no analysis of ours drew it
    assert main(["analyze", "kernels", str(members / "half"), "--out", "k"]) == 0  # relative, as typed
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["half_kernels.png", "kernels.csv", "kernels_overview.png", "mine_kernels.png"]

    before = {p.name: p.read_bytes() for p in (tmp_path / "k").iterdir()}
    (members / "unet" / "classes.json").write_text(json.dumps({"classes": 5}))
    capsys.readouterr()
    assert main(["analyze", "kernels", str(members / "half"), str(members / "unet"), "--out", "k"]) == 2
    err = capsys.readouterr().err
    assert "unet/classes.json: not a class map" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "k").iterdir()} == before  # untouched: nothing half-done
    (members / "unet" / "classes.json").write_text(json.dumps(["a", "b"]))
    assert main(["analyze", "kernels", str(members / "unet"), "--out", "k2"]) == 2
    assert "not a class map" in capsys.readouterr().err
    assert main(["analyze", "kernels", str(members / "half"), "--out", "k2", "--bins", "100000000"]) == 2
    assert "--bins 100000000 (1 to 1000)" in capsys.readouterr().err

    (tmp_path / "measured").mkdir()
    (tmp_path / "measured" / "measure_summary.json").write_text("{}")
    assert main(["analyze", "kernels", str(members / "half"), "--out", "measured"]) == 2
    assert "holds the outputs of minseg measure" in capsys.readouterr().err

    # a run whose members.json says done for a member whose checkpoint is gone: the others, and a warning
    run = tmp_path / "run"
    folder = run / "members" / "half" / "checkpoints"
    import shutil

    shutil.copytree(members / "half", folder / "epoch-0001")
    (folder / "best.json").write_text(json.dumps({"dir": "epoch-0001"}))
    rows = [{"member": "half", "model": "half_unet", "fold": None, "status": "done", "best_checkpoint": "x"},
            {"member": "gone", "model": "unet", "fold": None, "status": "done", "best_checkpoint": None}]
    (run / "members.json").write_text(json.dumps({"members": rows}))
    minseg_logger = logging.getLogger("minseg")
    minseg_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="minseg"):
            report = analyze_kernels([str(run)], str(tmp_path / "k3"))
    finally:
        minseg_logger.removeHandler(caplog.handler)
    assert {r["member"] for r in report.rows} == {"half"}
    warned = {id(r): r.fields for r in caplog.records if r.getMessage() == "kernels.members_without_checkpoint"}
    assert [fields["members"] for fields in warned.values()] == ["gone"]
