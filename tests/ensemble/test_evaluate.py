"""Evaluation through the Ray Data actor pool, selection, reports and the manifest."""

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minseg.cli import main
from minseg.ensemble.config import EvaluationSettings
from minseg.ensemble.evaluate import evaluate_ensemble
from minseg.ensemble.manifest import ManifestError, load_manifest, write_manifest
from minseg.ensemble.runtime import load_member_models
from minseg.ensemble.selection import BudgetUnmetError
from minseg.errors import InputError
from minseg.io.storage import Storage, join_uri
from minseg.metrics import metric_value


def evaluation_config(config, name, **extra):
    config = copy.deepcopy(config)
    config.evaluation = EvaluationSettings(**{"name": name, "k_min": 2, "actors": 2, "cpus_per_actor": 0.25,
                                              "overlays": 2, "weight_fit_pixels": 4000, **extra})
    return config


@pytest.fixture(scope="module")
def main_evaluation(trained_run):
    """The module's evaluation, and which items and learned weights each of its actor-pool passes was given
    (the passes run for real; they are only watched)."""
    from minseg.ensemble import evaluate as module

    passes = []
    real_pass = module.run_pass

    def watched(items, spec, label="evaluate"):
        passes.append(({i["item_id"] for i in items}, {k: dict(v) for k, v in spec.held_out_weights.items()}))
        return real_pass(items, spec, label)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "run_pass", watched)
        result = evaluate_ensemble(evaluation_config(trained_run, "main"))
    return result, passes


@pytest.fixture(scope="module")
def evaluation(main_evaluation):
    return main_evaluation[0]


def test_every_fusion_mode_for_every_k(evaluation):
    keys = [c.key for c in evaluation.candidates]
    assert keys[:3] == ["member:resunet", "member:vgg", "member:halfunet"]
    assert {k for k in keys if k.startswith("RUEL")} == {f"RUEL-{k}-{m}" for k in (2, 3)
                                                         for m in ("PV", "WV", "SOFT", "WEIGHTED_SOFT", "LEARNED")}
    ranking = evaluation.ranking
    for candidate in evaluation.candidates:
        if candidate.key.startswith("RUEL"):
            k = int(candidate.key.split("-")[1])
            assert candidate.members == ranking[:k]  # RUEL-k = the top-k of the ranking
            if candidate.mode == "wv":
                assert candidate.weights == list(range(k, 0, -1))
    assert evaluation.rank_split == "val"


def test_selection_is_the_best_candidate_on_validation_and_tpi_adds_up(evaluation):
    """Every candidate is scored on validation (what chooses) and on test (what is reported)."""
    key = evaluation.rank_key
    assert all(c.selection_metrics and c.metrics for c in evaluation.candidates)
    best = max(metric_value(c.selection_metrics, key) for c in evaluation.candidates)
    selected = next(c for c in evaluation.candidates if c.key == evaluation.selected.key)
    assert metric_value(selected.selection_metrics, key) == best
    assert evaluation.document["selection_split"] == "val"
    # a member's validation metrics are those it was ranked by
    for candidate in evaluation.candidates:
        if candidate.is_member:
            assert candidate.selection_metrics["miou"] == pytest.approx(
                evaluation.document["rank_metrics"][candidate.members[0]]["miou"])
    member_tpi = {c.members[0]: c.tpi for c in evaluation.candidates if c.key.startswith("member:")}
    assert all(t > 0 for t in member_tpi.values())
    for candidate in evaluation.candidates:
        if candidate.key.startswith("RUEL"):
            assert candidate.tpi >= sum(member_tpi[m] for m in candidate.members)


def test_reports_and_figures(evaluation):
    out = evaluation.manifest_uri.rsplit("/", 1)[0]
    from pathlib import Path

    folder = Path(out)
    for name in ("table4_members", "table5_ensembles", "table6_per_class"):
        assert (folder / f"{name}.csv").exists() and (folder / f"{name}.md").read_text().startswith("|")
    table6 = json.loads((folder / "reports.json").read_text())["table6_per_class"]
    assert [row["class"] for row in table6][:2] == ["background", "pyrite"] and "train particles" in table6[0]
    assert any("best baseline (vgg)" in k for k in table6[0])
    best = "member:" + json.loads((folder / "reports.json").read_text())["table4_members"][0]["member"]
    figures = ["iou_per_class.png", "confusion_selected.png"]
    if evaluation.selected.key != best:  # a selected single member is the best member: no duplicate figure
        figures.append("confusion_best_member.png")
        assert any(k.startswith("selected (") for k in table6[0])
    else:
        assert not (folder / "confusion_best_member.png").exists()
        assert not any(k.startswith("selected (") for k in table6[0])  # no second, identical column
    for png in figures:
        assert (folder / png).stat().st_size > 5000
    assert len(list(folder.glob("overlay_*.png"))) == 2


def test_manifest_roundtrip_and_loading_models(evaluation):
    storage = Storage()
    manifest = load_manifest(evaluation.manifest_uri, storage)
    selected = next(c for c in evaluation.candidates if c.key == evaluation.selected.key)
    assert [m.name for m in manifest.members] == selected.members
    assert manifest.tiling.tile == 48 and manifest.tiling.overlap == 12
    assert len(manifest.normalization["mean"]) == 3 and manifest.classes["classes"][8]["name"] == "gangue"
    models = load_member_models(manifest, storage)
    assert len(models) == len(manifest.members) and not models[0].training
    assert len(manifest.digest()) == 16


def test_manifest_validation_errors(evaluation, tmp_path):
    storage = Storage()
    manifest = load_manifest(evaluation.manifest_uri, storage)
    member = manifest.members[0]
    copy_dir = tmp_path / "checkpoint"
    shutil.copytree(member.checkpoint, copy_dir)
    broken = manifest.model_copy(deep=True)
    broken.members[0].checkpoint = str(copy_dir)
    write_manifest(broken, str(tmp_path / "m.json"), storage)
    assert load_manifest(str(tmp_path / "m.json"), storage).members[0].checkpoint == str(copy_dir)

    classes = json.loads((copy_dir / "classes.json").read_text())
    classes["classes"][1]["name"] = "not-pyrite"
    (copy_dir / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(ManifestError, match=f"member {member.name!r} was trained on classes"):
        load_manifest(str(tmp_path / "m.json"), storage)

    (copy_dir / "model.pt").write_bytes((copy_dir / "model.pt").read_bytes() + b"x")
    with pytest.raises(ManifestError, match="weights changed since selection"):
        load_manifest(str(tmp_path / "m.json"), storage)

    (copy_dir / "model.pt").unlink()
    with pytest.raises(ManifestError, match=r"checkpoint missing \(.*model.pt\)"):
        load_manifest(str(tmp_path / "m.json"), storage)

    document = json.loads((tmp_path / "m.json").read_text())
    document["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="version 99 is not supported"):
        load_manifest(str(tmp_path / "v.json"), storage)
    document["version"] = 1
    document["fusion"]["weights"] = [1.0] * (len(document["members"]) + 1)
    (tmp_path / "w.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="fusion.weights has"):
        load_manifest(str(tmp_path / "w.json"), storage, verify=False)
    # a member's name names files (analyze kernels wrote ../../x_kernels.png beside the repository)
    document["fusion"]["weights"] = None
    document["members"][0]["name"] = "../../x"
    (tmp_path / "n.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=r"members\[0\]\.name: a name of ASCII letters, digits"):
        load_manifest(str(tmp_path / "n.json"), storage, verify=False)


def test_select_writes_manifests_only_where_asked_and_never_over_another_command_s_file(evaluation, tmp_path,
                                                                                          capsys):
    """``--out`` a folder (existing, or any path ending in /) gets manifest-NAME.json inside (a trailing-slash path
    once became a file of that name); an existing manifest is replaced; evaluation.json, a run's members.json or
    any file not a manifest is refused (select once replaced members.json, and evaluate and train --resume then
    failed with tracebacks), and so is a name that is not .json."""
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    record = (Path(folder) / "evaluation.json").read_text()
    assert main(["select", folder, "--name", "again", "--out", f"{tmp_path}/new/"]) == 0
    assert load_manifest(f"{tmp_path}/new/manifest-again.json").name == "again"
    assert main(["select", folder, "--name", "again", "--out", str(tmp_path / "new")]) == 0  # it exists now
    assert main(["select", folder, "--out", str(tmp_path / "new" / "manifest-again.json")]) == 0  # a manifest
    assert load_manifest(f"{tmp_path}/new/manifest-again.json").name == "selected"
    capsys.readouterr()
    for target, message in ((f"{folder}/evaluation.json", "exists and is not an ensemble manifest"),
                            (str(evaluation_run_members(folder)), "exists and is not an ensemble manifest"),
                            (str(tmp_path / "manifest.yaml"), "is not a .json file name")):
        assert main(["select", folder, "--out", target]) == 2
        out, err = capsys.readouterr()
        assert message in err and "chosen on" not in out  # refused before the choice is said
    (Path(folder) / "manifest-notes.json").write_text("{}")  # the file --name makes: named as --name's
    assert main(["select", folder, "--name", "notes"]) == 2
    assert (f"--name: {folder}/manifest-notes.json exists and is not an ensemble manifest (another command's "
            "output?): select replaces only manifests; choose another name") in capsys.readouterr().err
    (Path(folder) / "manifest-notes.json").unlink()
    assert (Path(folder) / "evaluation.json").read_text() == record
    assert json.loads(evaluation_run_members(folder).read_text())["members"]


def test_select_refuses_a_member_retrained_since_the_evaluation(evaluation, tmp_path, capsys):
    """evaluation.json records the sha256 of the weights it scored; a member retrained since (same checkpoint path,
    other weights) went into a manifest under the old scores, and the manifest loaded. Here the record is edited
    instead of the shared run's weights: select must compare, and name the member and what to do."""
    from minseg.ensemble.manifest import file_sha256

    folder = Path(evaluation.manifest_uri.rsplit("/", 1)[0])
    document = json.loads((folder / "evaluation.json").read_text())
    for info in document["members"].values():
        assert info["sha256"] == file_sha256(Storage(), f"{info['checkpoint']}/model.pt")
    chosen = load_manifest(evaluation.manifest_uri).members[0].name
    document["members"][chosen]["sha256"] = "0" * 64
    copy = tmp_path / "evaluation"
    copy.mkdir()
    (copy / "evaluation.json").write_text(json.dumps(document))
    capsys.readouterr()
    assert main(["select", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"member {chosen}: " in err and "is not the file this evaluation scored" in err
    assert "run minseg evaluate again" in err and not list(copy.glob("manifest*"))
    for info in document["members"].values():  # an evaluation written before the hashes: said, not silent
        del info["sha256"]
    (copy / "evaluation.json").write_text(json.dumps(document))
    assert main(["select", str(copy)]) == 0
    assert "predates recording the weights it scored" in capsys.readouterr().err


def test_select_refuses_an_evaluation_record_edited_by_hand_and_never_writes_a_manifest_it_cannot_load(
        evaluation, tmp_path, capsys):
    """An evaluation.json edited or damaged (a break-it pass): select ended in a traceback (exit 1) from deep in
    the choice, or wrote a manifest that score then refused or crashed on (a class list cut short or no list).
    Each is now one line naming the file (exit 2), and no manifest is written. A manifest naming one member twice
    (it would vote twice) or with malformed classes is refused on loading. --candidate is recorded as what chose."""
    import copy as copying

    folder = Path(evaluation.manifest_uri.rsplit("/", 1)[0])
    original = json.loads((folder / "evaluation.json").read_text())
    edits = {
        "candidates": lambda d: d.update(candidates="x"),
        "tpi": lambda d: d["candidates"][0].update(tpi="fast"),
        "members": lambda d: d.update(members=[1, 2]),
        "tiling": lambda d: d.update(tiling="big"),
        "tile": lambda d: d["tiling"].update(tile=-5),
        "mode": lambda d: [c.update(mode="telepathy") for c in d["candidates"] if c.get("mode")],
        "fewer classes": lambda d: d["classes"].update(classes=d["classes"]["classes"][:3]),
        "classes text": lambda d: d["classes"].update(classes="x"),
        "rule": lambda d: d["selection"].update(rule="random"),
        "negative tpi": lambda d: d["candidates"][-1].update(tpi=-1.0),
        "infinite score": lambda d: d["candidates"][-1]["selection_metrics"].update(miou=float("inf")),
        # a second break-it pass: each was taken, and changed the choice or the manifest
        "negative count": lambda d: d["candidates"][0]["selection_confusions"][0][0].__setitem__(0, -5),
        "fractional count": lambda d: d["candidates"][1]["selection_confusions"][0][1].__setitem__(1, 1.5),
        "repeated name": lambda d: d["candidates"].append(copying.deepcopy(d["candidates"][-1])),
        "name and mode": lambda d: [c.update(mode="pv") for c in d["candidates"] if c.get("mode") == "soft"],
        "unknown member": lambda d: d["members"].pop(d["candidates"][0]["members"][0]),
        "no candidates": lambda d: d.update(candidates=[]),
        "tpi null": lambda d: d["candidates"][0].update(tpi=None),
    }
    said = {"tile": "tiling.tile: Input should be greater than or equal to",
            "fewer classes": "was trained on classes", "classes text": "'classes' must list the classes",
            "rule": "evaluation.selection.rule: ", "negative tpi": "tpi -1.0 is not a time in seconds",
            "infinite score": "miou is infinite, which no score is",
            "negative count": "selection_confusions are not per-image square matrices of pixel counts (whole numbers",
            "fractional count": "selection_confusions are not per-image square matrices",
            "repeated name": "is listed twice", "name and mode": "its mode 'pv' and 2 member(s) make it 'RUEL-2-PV'",
            "unknown member": "are not among the record's members", "no candidates": "the record lists none",
            "tpi null": "tpi None is not a time in seconds"}
    for name, edit in edits.items():
        document = copying.deepcopy(original)
        edit(document)
        edited = tmp_path / name.replace(" ", "-")
        edited.mkdir()
        (edited / "evaluation.json").write_text(json.dumps(document))
        capsys.readouterr()
        assert main(["select", str(edited)]) == 2, name
        err = capsys.readouterr().err
        named = f"{edited}/manifest-selected.json (not written)" if name == "fewer classes" else \
            f"{edited}/evaluation.json"
        assert "Traceback" not in err and named in err and said.get(name, "") in err, (name, err)
        assert not list(edited.glob("manifest*")), name
    assert main(["select", str(folder), "--candidate", "RUEL-2-SOFT", "--name", "hand"]) == 0
    picked = load_manifest(str(folder / "manifest-hand.json")).selection
    assert picked["chosen_by"] == "--candidate" and "rule" not in picked and "key" not in picked
    manifest = json.loads(Path(evaluation.manifest_uri).read_text())
    for name, edit in {"members": lambda m: m.update(members=[m["members"][0], *m["members"]]),
                       "classes": lambda m: m["classes"].update(classes=[1, 2, 3]),
                       "scale": lambda m: m["tiling"].update(scale=1000)}.items():  # 8 for 0.125: memory gone
        broken = copying.deepcopy(manifest)
        edit(broken)
        (tmp_path / f"{name}.json").write_text(json.dumps(broken))
        with pytest.raises(ManifestError, match={"members": r"members: names \S+ more than once",
                                                 "classes": r"classes\[0\] must be an object with a name",
                                                 "scale": r"tiling.scale: Input should be less than or equal to 4"
                                                 }[name]):
            load_manifest(str(tmp_path / f"{name}.json"))


def test_select_from_a_copied_run_names_the_copy_s_weights(evaluation, tmp_path, capsys):
    """evaluation.json records where the run was written; a run copied (or moved) with its evaluation wrote
    manifests naming the original's checkpoints, gone or retrained since. They are found under the copy now."""
    folder = Path(evaluation.manifest_uri.rsplit("/", 1)[0])
    run = folder.parent.parent
    copy = tmp_path / "copied-run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ray"))
    assert main(["select", str(copy / "evaluation" / folder.name), "--name", "copy"]) == 0
    manifest = load_manifest(str(copy / "evaluation" / folder.name / "manifest-copy.json"))
    assert manifest.members and all(m.checkpoint.startswith(f"{copy}/members/") for m in manifest.members)


def evaluation_run_members(folder: str) -> Path:
    """The training run's members table (evaluation/ensemble is two levels under the run)."""
    return Path(folder).parent.parent / "members.json"


def test_select_under_a_tpi_budget(evaluation, capsys):
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    fastest = min(evaluation.candidates, key=lambda c: c.tpi)
    assert main(["select", folder, "--tpi-budget", str(fastest.tpi * 1.0001), "--name", "fast"]) == 0
    manifest = load_manifest(f"{folder}/manifest-fast.json")
    assert manifest.selection["candidate"] == fastest.key
    assert main(["select", folder, "--candidate", "RUEL-3-WV", "--name", "wv"]) == 0
    assert load_manifest(f"{folder}/manifest-wv.json").fusion.weights == [3, 2, 1]
    capsys.readouterr()
    assert main(["select", folder, "--tpi-budget", "1e-9"]) == 2  # an input error: a message, no traceback
    assert "no candidate fits the TPI budget" in capsys.readouterr().err
    assert main(["select", folder, "--tpi-budget", "inf"]) == 2  # validated as the config's: no Infinity recorded
    assert "--tpi-budget: evaluation.selection.tpi_budget_s: Input should be a finite number" in capsys.readouterr().err


def test_select_by_the_one_standard_error_rule_from_the_recorded_per_image_scores(evaluation, tmp_path, capsys):
    """Every candidate carries each validation image's confusion matrix (they add up to its validation score's);
    ``select --rule one_se`` chooses from them without predicting, as the library's rule does."""
    from minseg.ensemble.config import SelectionSettings
    from minseg.ensemble.selection import Candidate, select, within_one_standard_error
    from minseg.enums import SelectionRule

    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    splits = json.loads(Storage().read_text(f"{evaluation.document['run']}/data/splits.json"))
    recorded = [Candidate.from_document(c) for c in evaluation.document["candidates"]]
    for candidate in recorded:
        assert len(candidate.selection_confusions) == len(splits["val"]) >= 2
        assert np.sum(candidate.selection_confusions, axis=0).tolist() == candidate.selection_metrics["confusion"]
    one_se = SelectionSettings(rule=SelectionRule.ONE_SE)
    expected = select(recorded, "miou", one_se)
    within = [c.key for c, _ in within_one_standard_error(recorded, "miou")]
    assert within[0] == evaluation.selected.key and expected.key in within
    assert len(expected.members) == max(len(c.members) for c in recorded if c.key in within)
    groups = evaluation.document["selection_groups"]
    assert len(groups) == len(splits["val"]) and expected.key == select(recorded, "miou", one_se,
                                                                        groups=groups).key
    assert main(["select", folder, "--rule", "one_se", "--name", "one-se"]) == 0
    selection = load_manifest(f"{folder}/manifest-one-se.json").selection
    assert selection["candidate"] == expected.key and selection["rule"] == "one_se"  # the rule that chose it
    # without --rule: the evaluation's own rule, and its budget
    document = json.loads(Storage().read_text(f"{folder}/evaluation.json"))
    fastest = min(recorded, key=lambda c: c.tpi)
    document["selection"] = {**document["selection"], "rule": "tpi_budget", "tpi_budget_s": fastest.tpi * 1.0001}
    shutil.copytree(folder, tmp_path / "budget")
    (tmp_path / "budget" / "evaluation.json").write_text(json.dumps(document))
    assert main(["select", str(tmp_path / "budget"), "--name", "recorded"]) == 0
    manifest = load_manifest(str(tmp_path / "budget" / "manifest-recorded.json"))
    assert manifest.selection["candidate"] == fastest.key and manifest.selection["rule"] == "tpi_budget"
    capsys.readouterr()
    assert main(["select", folder, "--rule", "one_se", "--tpi-budget", "1"]) == 2
    assert "does not take it" in capsys.readouterr().err
    assert main(["select", folder, "--rule", "tpi_budget"]) == 2
    assert "needs --tpi-budget" in capsys.readouterr().err


def test_learned_candidates_are_scored_on_validation_with_weights_fitted_without_the_image(main_evaluation):
    """Each validation image scores the learned candidates with weights fitted on the other images (the
    document keeps them), not with the weights fitted on every validation image: those would flatter them.
    The main evaluation's candidate pass (real actors) was watched to see which weights it was given for which
    images."""
    evaluation, passes = main_evaluation
    splits = json.loads(Storage().read_text(f"{evaluation.document['run']}/data/splits.json"))
    held_out = evaluation.document["learned_held_out_weights"]
    assert len(splits["val"]) >= 2 and set(held_out) == {"2", "3"}
    items, given = passes[-1]  # the candidate pass: validation + test images
    assert items == set(splits["val"]) | set(splits["test"])
    assert set(given) == {"RUEL-2-LEARNED", "RUEL-3-LEARNED"}
    for key, weights in given.items():
        k = key.split("-")[1]
        assert set(weights) == set(splits["val"]) and weights == held_out[k]  # never a test image
        assert all(len(w) == int(k) for w in weights.values())
    assert passes[0][1] == {}  # the ranking pass fuses nothing


def test_learned_weights_and_the_selection_never_see_the_test_split(trained_run, evaluation, tmp_path):
    """Replace every test mask: test metrics change; learned weights, validation scores and the choice must not."""
    config = copy.deepcopy(trained_run)
    data_root = tmp_path / "data"
    shutil.copytree(config.data.sources[0].uri, data_root)
    for item in evaluation.document["test_items"]:
        stem = item.split("/", 1)[1]
        mask_path = data_root / "masks" / f"{stem}.png"
        Image.fromarray(np.zeros_like(np.array(Image.open(mask_path)))).save(mask_path)
    original = config.data.sources[0]
    # same item ids as in training: keep the original folder's name as the source name
    config.data.sources[0] = original.model_copy(update={"uri": str(data_root), "name": original.uri.rstrip("/").split("/")[-1]})
    altered = evaluate_ensemble(evaluation_config(config, "altered", run_uri=evaluation.document["run"]))
    before = {c.key: c for c in evaluation.candidates}
    after = {c.key: c for c in altered.candidates}
    for key in before:
        if key.endswith("LEARNED"):
            assert after[key].weights == before[key].weights
        assert after[key].selection_metrics["miou"] == pytest.approx(before[key].selection_metrics["miou"])
    assert any(after[k].metrics["miou"] != before[k].metrics["miou"] for k in before)
    assert altered.selected.key == evaluation.selected.key  # ties included: timing decides none


def test_voters_limit_the_ensemble_pool_and_baselines_are_still_scored(trained_run):
    """The paper's b0/b1: trained, scored and reported as members, never voters in RUEL-k. One overlay for two
    test images: images without a preview must not be mistaken for previews (Ray turns an all-None block into
    NaNs)."""
    from pathlib import Path

    from minseg.errors import InputError

    config = evaluation_config(trained_run, "voters", modes=["wv"], voters=["resunet", "halfunet"])
    config.evaluation.overlays = 1
    result = evaluate_ensemble(config)
    keys = [c.key for c in result.candidates]
    assert {"member:resunet", "member:vgg", "member:halfunet"} <= set(keys)
    (ensemble,) = [c for c in result.candidates if c.key.startswith("RUEL")]
    assert ensemble.key == "RUEL-2-WV" and set(ensemble.members) == {"resunet", "halfunet"}
    assert result.document["voters"] == [n for n in result.ranking if n != "vgg"]
    assert len(result.document["test_items"]) > 1
    assert len(list(Path(result.output_uri).glob("overlay_*.png"))) == 1
    config = evaluation_config(trained_run, "bad-voters", voters=["resunet", "b0"])
    with pytest.raises(InputError, match="evaluation.voters names member\\(s\\) not evaluated: b0"):
        evaluate_ensemble(config)
    config = evaluation_config(trained_run, "bad-baselines", baselines=["vgg16"])  # was ignored without a word
    with pytest.raises(InputError, match="evaluation.baselines names member\\(s\\) not evaluated: vgg16; "):
        evaluate_ensemble(config)
    # k_min above the voters: refused before any pass (it used to build no ensemble and "select" a member)
    config = evaluation_config(trained_run, "k-too-big", k_min=4)
    with pytest.raises(InputError, match="evaluation.k_min 4 .* from 3 member\\(s\\) evaluated"):
        evaluate_ensemble(config)
    assert not Path(config.evaluation.output_uri(config.run.uri)).exists()


# ------------------------------------------------------------------ minseg score: a manifest on another labelled set


@pytest.fixture(scope="module")
def wv_manifest(evaluation):
    """A three-member weighted-vote ensemble chosen from the evaluation (the tiny run's selection may be one
    member)."""
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    assert main(["select", folder, "--candidate", "RUEL-3-WV", "--name", "score-wv"]) == 0
    return f"{folder}/manifest-score-wv.json"


def test_score_on_the_runs_own_test_split_repeats_the_evaluation(trained_run, evaluation, wv_manifest):
    """Same tiling, fusion and normalisation as the manifest: on the test split the evaluation scored, every
    member's and the ensemble's confusion matrices are exactly the evaluation's."""
    from minseg.ensemble.config import ScoreSettings
    from minseg.ensemble.score import score_ensemble

    config = copy.deepcopy(trained_run)
    config.score = ScoreSettings(manifest=wv_manifest, split="test", name="own-test", overlays=0, cpus_per_actor=0.25)
    result = score_ensemble(config)
    before = {c.key: c for c in evaluation.candidates}
    scored = {c["key"]: c for c in result.document["candidates"]}
    assert result.selected.key == "RUEL-3-WV" and set(scored) == {"RUEL-3-WV", "member:resunet", "member:vgg",
                                                                  "member:halfunet"}
    for key, candidate in scored.items():
        assert candidate["metrics"]["confusion"] == before[key].metrics["confusion"], key
    assert result.document["test_items"] == evaluation.document["test_items"]
    assert result.document["at_selection"]["miou"] == pytest.approx(before["RUEL-3-WV"].metrics["miou"])


def test_score_a_new_labelled_folder_from_the_cli(evaluation, wv_manifest, tmp_path, capsys, minseg_events):
    """An external labelled set (never split, classes from the manifest): every item scored but a broken one,
    which is quarantined; the full report beside score.json."""
    from minseg.synth.config import SectionsSynth
    from minseg.synth.dataset import write_section_dataset

    new = tmp_path / "new-sections"
    write_section_dataset(str(new), SectionsSynth(count=3, height=80, width=80), seed=11, task_cpus=0.25)
    (new / "images" / "broken.png").write_bytes(b"not a png")
    (new / "masks" / "broken.png").write_bytes(b"not a png either")
    out = tmp_path / "score"
    capsys.readouterr()
    assert main(["score", "--manifest", wv_manifest, "--data", str(new), "--out", str(out),
                 "--set", "ray.task_cpus=0.25", "--set", "score.cpus_per_actor=0.25"]) == 0
    printed = capsys.readouterr().out
    assert "3 images scored, 1 quarantined" in printed and "RUEL-3-WV on 3 image(s)" in printed
    (warned,) = [r for r in minseg_events if r.getMessage() == "data.quarantined"]  # it was an INFO count only
    assert warned.levelno == logging.WARNING and warned.fields["files"] == 1 and warned.fields["share"] == "25%"
    document = json.loads((out / "score.json").read_text())
    assert document["images"] == 3 and document["quarantined"] == 1 and document["split"] == "all"
    assert document["selected"] == "RUEL-3-WV" and document["data"] == [str(new)]
    ensemble = next(c for c in document["candidates"] if c["key"] == "RUEL-3-WV")
    assert np.asarray(ensemble["metrics"]["confusion"]).sum() == 3 * 80 * 80  # every pixel of every image, once
    assert len(ensemble["metrics"]["iou"]) == 9
    assert "broken" in (out / "data" / "quarantine.csv").read_text()
    table6 = json.loads((out / "reports.json").read_text())["table6_per_class"]
    assert "scored particles" in table6[0] and "train particles" not in table6[0]
    for name in ("table4_members.csv", "table5_ensembles.md", "iou_per_class.png", "confusion_selected.png"):
        assert (out / name).exists(), name
    assert len(list(out.glob("overlay_*.png"))) == 3
    assert document["bit_depth"] == 16

    # the same sections from a 12-bit colour camera (16-bit RGB PNGs holding 0..4095), their bit depth given beside
    # --data: the images are read back to the same pixels, and score the same, confusion for confusion (the scoring
    # pass reads them with it)
    import imagecodecs

    camera = tmp_path / "camera"
    shutil.copytree(new, camera, ignore=shutil.ignore_patterns("broken.png"))
    for path in (camera / "images").glob("*.png"):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.uint32)
        path.write_bytes(imagecodecs.png_encode((rgb * 4095 // 255).astype(np.uint16)))
    assert main(["score", "--manifest", wv_manifest, "--data", str(camera), "--out", str(tmp_path / "score12"),
                 "--set", "ray.task_cpus=0.25", "--set", "score.cpus_per_actor=0.25",
                 "--set", "data.bit_depth=12"]) == 0
    again = json.loads((tmp_path / "score12" / "score.json").read_text())
    assert again["bit_depth"] == 12 and again["quarantined"] == 0
    assert {c["key"]: c["metrics"]["confusion"] for c in again["candidates"]} == \
        {c["key"]: c["metrics"]["confusion"] for c in document["candidates"]}


def test_score_refuses_other_classes_and_a_missing_manifest(wv_manifest, synthetic_sections, tmp_path, capsys):
    import yaml

    config = {"data": {"sources": [{"uri": str(synthetic_sections)}],
                       "classes": {"classes": [{"name": "background"}, {"name": "ore"}]}},
              "score": {"manifest": wv_manifest}}
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["score", "-c", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "data.classes names ['background', 'ore'] differ from the ensemble's classes" in err
    assert "Traceback" not in err
    assert main(["score", "--manifest", str(tmp_path / "none.json"), "--data", str(synthetic_sections)]) == 2
    assert "no such ensemble manifest" in capsys.readouterr().err
    assert main(["score", "--data", str(synthetic_sections)]) == 2
    assert "score needs the ensemble's manifest" in capsys.readouterr().err


def test_the_demo_compares_its_selected_ensemble_with_its_best_member_on_the_slide(evaluation, tmp_path):
    """The demo's last step with an ensemble selected: the slide segmented by the ensemble and by the member
    ranked first on validation, both scored against the slide's true mask, both numbers printed."""
    import dataclasses

    from minseg.config import MinsegConfig
    from minseg.demo import SynthResult, segment_synthetic_slide, slide_comparison
    from minseg.ensemble.selection import build_manifest
    from minseg.inference.config import SegmentSettings
    from minseg.synth.config import SlideSynth
    from minseg.synth.slide import write_synthetic_slide

    storage = Storage()
    ensemble = next(c for c in evaluation.candidates if c.key == "RUEL-3-SOFT")
    manifest_uri = str(tmp_path / "evaluation" / "manifest.json")
    write_manifest(build_manifest(evaluation.document, ensemble.key, storage, "ensemble"), manifest_uri, storage)
    selected = dataclasses.replace(evaluation, selected=ensemble, output_uri=str(tmp_path / "evaluation"),
                                   manifest_uri=manifest_uri)
    slide = write_synthetic_slide(str(tmp_path / "slide.tif"), str(tmp_path / "slide_mask.tif"),
                                  SlideSynth(height=160, width=200, tile=64), seed=5)
    config = MinsegConfig.model_validate({"run": {"output_uri": str(tmp_path / "out")}})
    config.segment = SegmentSettings(manifest_uri=manifest_uri, output_tile=64, block=128, actors=1)
    score = segment_synthetic_slide(config, SynthResult(str(tmp_path), 0.0, {"slide": slide}, {}), selected)

    segment = tmp_path / "out" / "minseg-run" / "segment"
    truth = json.loads((segment / "slides" / "slide" / "truth_comparison.json").read_text())
    alone = json.loads((segment / "best-member" / "slide" / "truth_comparison.json").read_text())
    assert score.selected == "RUEL-3-SOFT" and score.miou == truth["miou"]
    assert score.best_member == evaluation.ranking[0] and score.best_member_miou == alone["miou"]
    best_manifest = load_manifest(str(tmp_path / "evaluation" / "best-member" / "manifest.json"))
    assert [m.name for m in best_manifest.members] == [evaluation.ranking[0]]
    assert not (segment / "best-member" / "slide" / "labels.tif").exists()  # labels for the comparison only
    lines = slide_comparison(score)
    assert lines[0].startswith(f"Selected ensemble RUEL-3-SOFT: slide mIoU {truth['miou']:.3f}; its best member "
                               f"alone ({evaluation.ranking[0]}, ranked first on validation): {alone['miou']:.3f}")
    assert "background" in lines[1] and "gangue" in lines[1]


def test_select_says_which_split_chooses_and_warns_on_documents_without_validation_scores(evaluation, tmp_path,
                                                                                          capsys):
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    capsys.readouterr()
    assert main(["select", folder, "--name", "again"]) == 0
    captured = capsys.readouterr()
    assert "chosen on the val split" in captured.out and "warning" not in captured.err
    assert load_manifest(f"{folder}/manifest-again.json").selection["split"] == "val"
    old = json.loads(Storage().read_text(f"{folder}/evaluation.json"))
    assert old["bit_depth"] == 16  # data.bit_depth, for the manifest (segment reads slides with it)
    in_sample = {k: v for k, v in old.items() if k != "learned_held_out_weights"}  # written before out-of-fold scores
    in_sample["bit_depth"] = 12  # as if the members had trained on a 12-bit camera's frames
    shutil.copytree(folder, tmp_path / "in-sample")
    (tmp_path / "in-sample" / "evaluation.json").write_text(json.dumps(in_sample))
    assert main(["select", str(tmp_path / "in-sample"), "--name", "in-sample"]) == 0
    assert "predates scoring learned candidates out of fold" in capsys.readouterr().err
    assert load_manifest(str(tmp_path / "in-sample" / "manifest-in-sample.json")).bit_depth == 12
    old.pop("selection_split")
    old.pop("bit_depth")
    for candidate in old["candidates"]:
        candidate.pop("selection_metrics")
    shutil.copytree(folder, tmp_path / "old")
    (tmp_path / "old" / "evaluation.json").write_text(json.dumps(old))
    assert main(["select", str(tmp_path / "old"), "--name", "old"]) == 0
    captured = capsys.readouterr()
    assert "predates choosing on validation" in captured.err and "chosen on the test split" in captured.out
    best_on_test = sorted(evaluation.candidates, key=lambda c: (-c.metrics["miou"], c.tpi, c.key))[0]
    assert load_manifest(str(tmp_path / "old" / "manifest-old.json")).selection["candidate"] == best_on_test.key
    assert load_manifest(str(tmp_path / "old" / "manifest-old.json")).bit_depth == 16


def test_every_record_is_standard_json_and_undefined_scores_read_back_as_undefined(trained_ensemble, evaluation,
                                                                                   capsys):
    """A class a split lacks has no IoU (NaN in memory): training's and evaluation's records write it null, which
    any JSON reader takes (Python's json would write a bare NaN), and ``select`` reads null back as undefined,
    choosing as the evaluation did."""
    import math

    from minseg.ensemble.config import SelectionSettings
    from minseg.ensemble.selection import Candidate, select
    from tests.support.documents import every_record_is_strict_json, strict_json

    # checkpoints, members' results, data reports, the evaluation; ray/ is Ray Train's
    assert every_record_is_strict_json(trained_ensemble[2], skip=("ray",)) > 30
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    document = strict_json(f"{folder}/evaluation.json")
    undefined = [(c["key"], i) for c in evaluation.document["candidates"]
                 for i, value in enumerate(c["selection_metrics"]["iou"]) if math.isnan(value)]
    assert undefined, "the fixture's validation split should lack a class"
    on_disk = {c["key"]: c for c in document["candidates"]}
    assert all(on_disk[key]["selection_metrics"]["iou"][i] is None for key, i in undefined)
    name = document["classes"]["classes"][undefined[0][1]]["name"]
    in_memory = [Candidate.from_document(c) for c in evaluation.document["candidates"]]
    expected = select(in_memory, document["rank_key"], SelectionSettings())
    capsys.readouterr()
    assert main(["select", folder, "--name", "by-undefined"]) == 0
    assert load_manifest(f"{folder}/manifest-by-undefined.json").selection["candidate"] == expected.key
    strict_json(f"{folder}/manifest-by-undefined.json")
    # choosing by the IoU of that class (undefined for candidates predicting none of it, 0 for stray pixels) is
    # refused, in memory and from the record read back
    message = f"class {name!r} has no true pixels on the val split"
    for key in (f"iou:{name}", f"recall:{name}"):
        with pytest.raises(InputError, match=message):
            select(in_memory, key, SelectionSettings(), split="val")
        assert main(["select", folder, "--key", key, "--name", "by-absent"]) == 2
        err = capsys.readouterr().err
        assert message in err and "choose by another key" in err and "Traceback" not in err


def test_a_rank_key_of_a_class_the_ranking_split_lacks_is_refused_before_ranking(trained_run, evaluation,
                                                                                 monkeypatch):
    from minseg.ensemble import evaluate as module

    metrics = evaluation.candidates[0].selection_metrics
    name = next(c for c, n in zip(metrics["classes"], metrics["support"]) if n == 0)
    monkeypatch.setattr(module, "run_pass", lambda *a, **k: pytest.fail("a pass ran"))
    with pytest.raises(InputError, match=f"iou:{name}: class {name!r} has no true pixels on the val split"):
        evaluate_ensemble(evaluation_config(trained_run, "absent-key", rank_key=f"iou:{name}"))
    with pytest.raises(InputError, match="evaluation.rank_key: unknown class 'pyrit' in 'iou:pyrit'; classes: "):
        evaluate_ensemble(evaluation_config(trained_run, "typo-key", rank_key="iou:pyrit"))  # before Ray, too


def test_members_are_evaluated_at_their_best_or_last_checkpoint(trained_run, evaluation, tmp_path):
    """``evaluation.checkpoint``: ``best`` scores the checkpoint training kept on validation (the last without
    one), ``last`` the final epoch (validation then ranks on images that chose nothing); the document says which;
    a member that recorded no last checkpoint is an input error naming it."""
    from minseg.enums import MemberCheckpoint
    from minseg.ensemble.evaluate import discover_members
    from minseg.errors import InputError

    storage = Storage()
    run = evaluation.document["run"]
    table = json.loads(storage.read_text(f"{run}/members.json"))["members"]
    done = [row for row in table if row["status"] == "done" and row.get("fold") is None]
    assert evaluation.document["member_checkpoint"] == "best"
    assert {n: m["checkpoint"] for n, m in evaluation.document["members"].items()} == \
        {row["member"]: row["best_checkpoint"] for row in done}

    # the run's checkpoints copied elsewhere (found there by their pointers), one member without a best (trained
    # without validation): which pointer each choice reads
    for row in done:
        shutil.copytree(f"{run}/members/{row['member']}/checkpoints", tmp_path / "members" / row["member"] /
                        "checkpoints")
    (tmp_path / "members" / "vgg" / "checkpoints" / "best.json").unlink()
    (tmp_path / "members.json").write_text(json.dumps({"members": done}))

    def under_copy(uri):
        return str(tmp_path / uri[len(run) + 1:])

    for which, expected in ((MemberCheckpoint.BEST, [under_copy(r["last_checkpoint"] if r["member"] == "vgg" else
                                                                r["best_checkpoint"]) for r in done]),
                            (MemberCheckpoint.LAST, [under_copy(r["last_checkpoint"]) for r in done])):
        members = discover_members(storage, str(tmp_path), [r["member"] for r in done], trained_run.data, which)
        assert [m.checkpoint for m in members] == expected
    (tmp_path / "members" / "vgg" / "checkpoints" / "last.json").unlink()
    with pytest.raises(InputError, match="member 'vgg' of .*: no last checkpoint under .*vgg/checkpoints"):
        discover_members(storage, str(tmp_path), None, trained_run.data, MemberCheckpoint.LAST)

    # the session's members peak before their last epoch, so the two choices differ here
    assert any(row["best_checkpoint"] != row["last_checkpoint"] for row in done), done
    config = evaluation_config(trained_run, "last-epoch", modes=["soft"], checkpoint="last")
    config.evaluation.overlays = 0
    last = evaluate_ensemble(config)
    assert last.document["member_checkpoint"] == "last"
    assert load_manifest(last.manifest_uri, storage).selection["member_checkpoint"] == "last"
    assert {n: m["checkpoint"] for n, m in last.document["members"].items()} == \
        {row["member"]: row["last_checkpoint"] for row in done}


def test_members_trained_on_other_data_are_refused(trained_run, tmp_path):
    """A member trained alone (--members) before the data changed keeps checkpoints recorded on other splits:
    data/splits.json says only what the latest training saw. What training records is what evaluation computes
    (the session's members pass); a member recorded on other data is named."""
    from minseg.data.pipeline import prepare_data
    from minseg.enums import Task
    from minseg.ensemble.evaluate import _refuse_members_of_other_data, discover_members
    from minseg.errors import InputError

    storage = Storage()
    members = discover_members(storage, trained_run.run.uri, None, trained_run.data)
    prepared = prepare_data(trained_run.data, Task.SEGMENTATION, trained_run.run.seed, storage,
                            str(tmp_path / "data"), 0.25)
    _refuse_members_of_other_data(storage, members, prepared)
    recorded = {json.loads(open(f"{m.checkpoint}/state.json").read())["data_signature"] for m in members}
    assert recorded == {prepared.data_signature()}  # training records what evaluation computes
    moved = tmp_path / "vgg-checkpoint"
    shutil.copytree(next(m.checkpoint for m in members if m.name == "vgg"), moved)
    state = json.loads((moved / "state.json").read_text())
    (moved / "state.json").write_text(json.dumps({**state, "data_signature": "trained-elsewhere"}))
    others = [dataclasses.replace(m, checkpoint=str(moved)) if m.name == "vgg" else m for m in members]
    with pytest.raises(InputError, match=r"members trained on other data than these splits .*: vgg \("):
        _refuse_members_of_other_data(storage, others, prepared)
    # a member whose class map reads masks otherwise (data.classes reordered since): every class would be scored
    # against another's pixels
    (moved / "state.json").write_text(json.dumps(state))
    classes = json.loads((moved / "classes.json").read_text())
    first, second = classes["classes"][1], classes["classes"][2]
    classes["classes"][1], classes["classes"][2] = {**second, "id": 1}, {**first, "id": 2}
    (moved / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(InputError, match=rf"member vgg \(\S+\) trained with another class map than data.classes "
                                         rf"gives now: class id 1 was '{second['name']}' \(mask codes "):
        _refuse_members_of_other_data(storage, others, prepared)


def test_members_that_did_not_finish_are_said_and_a_stopped_run_points_to_resume(trained_run, tmp_path, caplog):
    """Evaluating a run whose members partly failed built an ensemble of the others without a word (it looked like
    the configured one); a run stopped before its members table said "is this a training run?"."""
    import logging

    from minseg.ensemble.evaluate import discover_members
    from minseg.errors import InputError

    configured = [m.name for m in trained_run.training.members] + ["later"]  # one not trained yet (--members)
    with caplog.at_level(logging.WARNING, logger="minseg"):
        members = discover_members(Storage(), trained_run.run.uri, None, configured=configured)
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "ensemble.members_not_finished"]
    assert warned["members"] == "diverges (failed), typo (failed)" and len(members) == 3
    (untrained,) = [r.fields for r in caplog.records if r.getMessage() == "ensemble.members_not_trained"]
    assert untrained["members"] == "later"
    stopped = tmp_path / "stopped"
    (stopped / "members" / "a" / "checkpoints").mkdir(parents=True)
    (stopped / "members" / "a" / "checkpoints" / "last.json").write_text("{}")
    with pytest.raises(InputError, match=r"stopped before the members table was written .* 'minseg train --resume'"):
        discover_members(Storage(), str(stopped), None)
    with pytest.raises(InputError, match=r"is this a training run"):
        discover_members(Storage(), str(tmp_path), None)
    # one member's class map renamed by hand: named with what differs (the message named the member read first)
    copied = tmp_path / "copied"
    shutil.copytree(trained_run.run.uri, copied, ignore=shutil.ignore_patterns("ray"))
    last = json.loads((copied / "members" / "vgg" / "checkpoints" / "best.json").read_text())
    folder = copied / "members" / "vgg" / "checkpoints" / last["uri"].rstrip("/").rsplit("/", 1)[-1]
    classes = json.loads((folder / "classes.json").read_text())
    renamed = classes["classes"][-1]["name"]
    classes["classes"][-1]["name"] = "quartz"
    (folder / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(InputError, match=rf"member 'vgg' \(\S+\) was trained with another class map than data.classes "
                                         rf"gives now: class id 8 was 'quartz' .* '{renamed}'"):
        discover_members(Storage(), str(copied), ["resunet", "vgg", "halfunet"], trained_run.data)


EARLIER_REPORTS = ("table7_comparison.csv", "table7_comparison.md", "overlay_old_item.png", "confusion_best_member.png",
                   "table4_members.csv")
LOOKALIKE = "confusion_selected.png"  # named as minseg's figures are, not listed by the earlier run's document
OTHER_FILES = ("manifest-fast.json", "notes.txt", "table_notes.csv", "confusion_mine.png", "data/table4_members.csv",
               "best-member/manifest.json")
NEW_OUTPUTS = ("evaluation.json", "manifest.json", "table4_members.csv", "overlay_new_item.png", "reports.json")
# a hand-edited list naming other files (a folder, the parent): only names of minseg's reports are taken from it
LISTED = json.dumps({"report_files": [*EARLIER_REPORTS, "notes.txt", "best-member", "..", "", "data"]})


def _contents(storage: Storage, root: str) -> dict[str, str]:
    return {info.uri[len(root) + 1:]: storage.read_text(info.uri) for info in storage.list(root + "/")}


def published_evaluation(storage: Storage, root: str, earlier: str | None) -> dict[str, str]:
    """An evaluation folder holding an earlier run's reports, its documents (``earlier``: their text; None: none)
    and someone's files, a new run staged and put in place (``publish_outputs``): what ``root`` holds after (name
    -> text). Shared with the S3 test."""
    from minseg.ensemble.reports import EVALUATION_DOCUMENTS, publish_outputs
    from minseg.io.storage import staging_folder

    for name in (*EARLIER_REPORTS, LOOKALIKE, *OTHER_FILES):
        storage.write_text(join_uri(root, name), "earlier")
    for name in EVALUATION_DOCUMENTS if earlier is not None else ():
        storage.write_text(join_uri(root, name), earlier)
    staged = staging_folder(root, "evaluate")
    for name in NEW_OUTPUTS:
        storage.write_text(join_uri(staged, name), "new")
    publish_outputs(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    return _contents(storage, root)


def published_after_a_cut(storage: Storage, root: str) -> list[dict[str, str]]:
    """What ``root`` holds after the next run's ``finish_publication`` in turn: (1) a run killed while its files
    were put in place (its documents left first, one report in place) is completed; (2) one killed while deleting
    its staging folder (only the marker left there, the same in place), the manifest replaced by ``select``
    meanwhile: nothing is put in place again, the staging folder goes; (3) a staging folder holding only the marker
    while the one in place is gone (moved by hand): left as it is, nothing deleted; (4) a run that failed before its
    outputs were complete (no marker staged): its remains are deleted."""
    from minseg.ensemble.reports import EVALUATION_DOCUMENTS, finish_publication
    from minseg.io.storage import staging_folder

    for name in ("table4_members.csv", "overlay_a.png", "manifest-fast.json"):
        storage.write_text(join_uri(root, name), "earlier")
    staged = staging_folder(root, "evaluate")
    for name in ("table4_members.csv", *EVALUATION_DOCUMENTS):
        storage.write_text(join_uri(staged, name), "new")
    storage.write_text(join_uri(root, "table4_members.csv"), "new")  # one file in place when it was killed
    assert finish_publication(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    seen = [_contents(storage, root)]
    storage.write_text(join_uri(staged, "evaluation.json"), "new")
    storage.write_text(join_uri(root, "manifest.json"), "selected")
    assert not finish_publication(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    seen.append(_contents(storage, root))
    storage.copy(join_uri(root, "evaluation.json"), join_uri(staged, "evaluation.json"))
    storage.delete(join_uri(root, "evaluation.json"))
    assert not finish_publication(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    seen.append(_contents(storage, root))
    storage.delete(join_uri(staged, "evaluation.json"))
    for name in ("table4_members.csv", "manifest.json"):
        storage.write_text(join_uri(staged, name), "failed")
    assert not finish_publication(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    return [*seen, _contents(storage, root)]


PUBLISHED = {**{name: "earlier" for name in OTHER_FILES}, **{name: "new" for name in NEW_OUTPUTS}}
COMPLETED = {"evaluation.json": "new", "manifest.json": "new", "table4_members.csv": "new",
             "manifest-fast.json": "earlier"}
_SELECTED = {**COMPLETED, "manifest.json": "selected"}
_MOVED = {**{name: text for name, text in _SELECTED.items() if name != "evaluation.json"},
          ".minseg-redo/evaluate/evaluation.json": "new"}
AFTER_A_CUT = [COMPLETED, _SELECTED, _MOVED, {name: text for name, text in _MOVED.items() if "redo" not in name}]


def test_an_evaluation_replaces_the_earlier_one_whole_and_keeps_other_files(tmp_path):
    """A rerun's outputs are written aside and put in place complete: an earlier run's comparison table (baselines
    then) and overlays of images no longer in the split are deleted (those its document lists; all named as
    minseg's where the document predates the list), select's manifests and someone's files kept; where no document
    says minseg wrote them, files named like its reports are someone's and kept too."""
    lookalike = {LOOKALIKE: "earlier"}
    assert published_evaluation(Storage(), str(tmp_path / "a"), LISTED) == {**PUBLISHED, **lookalike}
    assert not (tmp_path / "a" / ".minseg-redo").exists()
    assert published_evaluation(Storage(), str(tmp_path / "b"), "{}") == PUBLISHED
    kept = {name: "earlier" for name in EARLIER_REPORTS if name not in NEW_OUTPUTS}
    assert published_evaluation(Storage(), str(tmp_path / "c"), None) == {**PUBLISHED, **kept, **lookalike}


def test_an_evaluation_cut_short_while_put_in_place_is_completed_and_a_failed_one_leaves_nothing(tmp_path):
    """Killed while its files were put in place (the documents leave first, so the folder reads unfinished): the
    next run puts the complete outputs in place before anything else; killed while its staging folder was
    deleted, with the manifest replaced meanwhile: put in place again, it deleted every report the staging
    folder had lost. Failed before its outputs were complete (no marker staged): its remains are deleted and
    the evaluation in place is as it was; a staging folder changed by hand is left to its owner."""
    from minseg.ensemble.reports import EVALUATION_DOCUMENTS, finish_publication

    assert published_after_a_cut(Storage(), str(tmp_path / "evaluation" / "ensemble")) == AFTER_A_CUT
    assert not (tmp_path / "evaluation" / "ensemble" / ".minseg-redo").exists()
    (tmp_path / "evaluation" / "ensemble" / ".minseg-redo").write_text("mine")  # before the work, not after
    with pytest.raises(InputError, match=r"ensemble/\.minseg-redo is a file; minseg evaluate stages its outputs in"):
        finish_publication(Storage(), str(tmp_path / "evaluation" / "ensemble"), "evaluate", EVALUATION_DOCUMENTS)


def test_an_evaluation_that_selected_none_cut_short_while_put_in_place_is_completed(tmp_path):
    """An evaluation whose TPI budget no candidate fit stages no manifest: killed while put in place, the next run
    (or select) completes it, the earlier manifest gone with its record; a selected evaluation's staging folder
    that lost its manifest by hand is still left to its owner."""
    from minseg.ensemble.reports import EVALUATION_DOCUMENTS, finish_publication
    from minseg.io.storage import staging_folder

    storage, root = Storage(), str(tmp_path / "ensemble")
    staged = staging_folder(root, "evaluate")
    storage.write_text(join_uri(root, "manifest.json"), "earlier")
    storage.write_text(join_uri(staged, "table4_members.csv"), "new")
    storage.write_json(join_uri(staged, "evaluation.json"), {"selected": None, "unselected": "no candidate fits"})
    storage.delete(join_uri(root, "manifest.json"))  # the documents leave first: killed after that
    assert finish_publication(storage, root, "evaluate", EVALUATION_DOCUMENTS)
    assert sorted(_contents(storage, root)) == ["evaluation.json", "table4_members.csv"]
    assert json.loads(storage.read_text(join_uri(root, "evaluation.json")))["selected"] is None

    other = str(tmp_path / "selected")
    storage.write_json(join_uri(staging_folder(other, "evaluate"), "evaluation.json"), {"selected": "RUEL-2-SOFT"})
    assert not finish_publication(storage, other, "evaluate", EVALUATION_DOCUMENTS)
    assert not storage.exists(join_uri(other, "evaluation.json"))  # left as it is: its manifest is missing


def test_an_evaluation_is_put_in_place_whole_on_s3(s3):
    """evaluate / score's outputs staged and put in place on S3 as locally (server-side copies): the earlier run's
    reports replaced, others' files kept, a publication cut short completed, a failed one's remains deleted."""
    assert published_evaluation(s3.storage(), s3.uri("evaluation/ensemble"), LISTED) == {**PUBLISHED,
                                                                                         LOOKALIKE: "earlier"}
    assert published_after_a_cut(s3.storage(), s3.uri("evaluation/cut")) == AFTER_A_CUT


def test_an_evaluation_run_again_replaces_its_outputs_and_keeps_the_users(trained_run):
    """End to end: an evaluation run again into its folder (now without overlays) leaves no overlay of the first,
    keeps a select manifest and someone's notes, and no staging folder."""
    storage = Storage()
    first = evaluate_ensemble(evaluation_config(trained_run, "again", modes=["soft"], overlays=1))
    out = Path(first.output_uri)
    assert any(p.name.startswith("overlay_") for p in out.iterdir())
    assert main(["select", str(out), "--candidate", "member:vgg", "--name", "vgg"]) == 0
    (out / "notes.txt").write_text("mine")
    again = evaluate_ensemble(evaluation_config(trained_run, "again", modes=["soft"], overlays=0))
    assert again.output_uri == first.output_uri
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith("overlay_")] and ".minseg-redo" not in names
    assert {"notes.txt", "manifest-vgg.json", "evaluation.json", "manifest.json", "reports.json"} <= set(names)
    assert json.loads(storage.read_text(again.manifest_uri))["members"]  # the new manifest, in place

    # a TPI budget no candidate fits, known once every candidate is timed: the scores are published and kept, no
    # manifest (the earlier one leaves with its evaluation), and select chooses from them without predicting
    with pytest.raises(BudgetUnmetError, match="no candidate fits the TPI budget .* without a manifest") as raised:
        evaluate_ensemble(evaluation_config(trained_run, "again", modes=["soft"], overlays=1,
                                            selection={"rule": "tpi_budget", "tpi_budget_s": 1e-9}))
    assert f"minseg select {out} --tpi-budget" in str(raised.value)
    document = json.loads((out / "evaluation.json").read_text())
    assert document["selected"] is None and document["unselected"].startswith("no candidate fits the TPI budget")
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names and ".minseg-redo" not in names
    assert {"notes.txt", "manifest-vgg.json", "table4_members.csv", "table5_ensembles.csv"} <= set(names)
    assert [n for n in names if n.startswith("overlay_")] and "confusion_selected.png" not in names
    with pytest.raises(ManifestError, match="the evaluation in .* selected none .*no candidate fits"):
        load_manifest(str(out / "manifest.json"))
    assert main(["select", str(out), "--rule", "best", "--name", "best"]) == 0
    assert load_manifest(str(out / "manifest-best.json")).selection["rule"] == "best"
    with pytest.raises(ManifestError, match=r"give one select wrote beside it \(manifest-best.json, manifest-vgg"):
        load_manifest(str(out / "manifest.json"))  # segment's and score's default: the one select just wrote named
    assert main(["select", str(out), "--tpi-budget", "1e9", "--out", str(out / "manifest.json")]) == 0  # the hint's
    assert load_manifest(str(out / "manifest.json")).selection["rule"] == "tpi_budget"


def test_a_damaged_member_checkpoint_is_one_error_naming_member_and_file(trained_run, evaluation):
    """``model.pt`` empty, truncated or deleted: refused on the driver before any actor starts (a truncated file
    failed every actor, each printing its traceback, before the driver's one error)."""
    from pathlib import Path

    from minseg.ensemble.runtime import MemberLoadError

    weights = Path(evaluation.document["members"]["vgg"]["checkpoint"]) / "model.pt"
    original = weights.read_bytes()
    try:
        for damage, message in ((b"", "model.pt: empty"), (original[: len(original) // 2],
                                                           "model.pt: damaged ("), (None, "no such file")):
            if damage is None:
                weights.unlink()
            else:
                weights.write_bytes(damage)
            with pytest.raises(MemberLoadError, match="member 'vgg'") as error:
                evaluate_ensemble(evaluation_config(trained_run, "damaged"))
            assert message in str(error.value) and str(weights) in str(error.value)
            assert "Traceback" not in str(error.value) and "\n" not in str(error.value)
    finally:
        weights.write_bytes(original)


def test_an_actor_pool_the_cluster_cannot_hold_is_refused_before_the_data_is_prepared(trained_run, monkeypatch):
    """``evaluation.gpus_per_actor: 1`` without GPUs, or more CPUs per actor than a node has, used to wait forever."""
    from minseg.ensemble import evaluate as module
    from minseg.runtime import ResourceError

    monkeypatch.setattr(module, "prepare_evaluation_data", lambda *a, **k: pytest.fail("data prepared"))
    for settings, key in (({"gpus_per_actor": 1}, "evaluation.gpus_per_actor 1 GPUs"),
                          ({"cpus_per_actor": 4}, "evaluation.cpus_per_actor 4 CPUs")):
        with pytest.raises(ResourceError, match=key):
            evaluate_ensemble(evaluation_config(trained_run, "too-big", **settings))


def test_a_changed_split_names_the_images_that_moved(tmp_path):
    """Images added to a source folder after training: evaluation refused with "the train split differs", and the
    user had to find out which images themselves."""
    from types import SimpleNamespace

    from minseg.ensemble.evaluate import _check_same_splits

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "splits.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["v"], "test": ["t"]}))
    now = {"train": [{"item_id": i} for i in ("a", "c", "d", "e")], "val": [{"item_id": "v"}],
           "test": [{"item_id": "t"}]}
    with pytest.raises(InputError, match=r"the train split differs from the one the members were trained with "
                                         r"\(.*splits.json: now in it, not at training 2: d, e; at training, not now "
                                         r"1: b\); the data or the split settings changed"):
        _check_same_splits(Storage(), str(tmp_path), SimpleNamespace(splits=now))
    now["train"] = [{"item_id": i} for i in ("c", "b", "a")]  # the same images in another order: the same split
    _check_same_splits(Storage(), str(tmp_path), SimpleNamespace(splits=now))


def test_members_with_the_same_weights_are_warned_about(caplog):
    """Two members of one model whose weights are the same file (a copied checkpoint, members configured alike
    down to the seed) vote alike: warned once, naming them; same weights under another model are not alike."""
    import logging

    from minseg.ensemble.evaluate import _warn_identical_members
    from minseg.ensemble.runtime import MemberRef

    members = [MemberRef("a", "unet", "/r/a", {"width": 0.25}), MemberRef("b", "unet", "/r/b", {"width": 0.25}),
               MemberRef("c", "unet", "/r/c", {"width": 0.25}), MemberRef("d", "res_unet", "/r/d", {})]
    with caplog.at_level(logging.WARNING, logger="minseg"):
        _warn_identical_members(members, {"a": "1" * 64, "b": "1" * 64, "c": "2" * 64, "d": "1" * 64})
    warned = {id(r): r.fields for r in caplog.records if r.getMessage() == "ensemble.identical_members"}
    assert [fields["members"] for fields in warned.values()] == ["a,b"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minseg"):
        _warn_identical_members(members, {"a": "1" * 64, "b": "3" * 64, "c": "2" * 64, "d": "1" * 64})
    assert not [r for r in caplog.records if r.getMessage() == "ensemble.identical_members"]
