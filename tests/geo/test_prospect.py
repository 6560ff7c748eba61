"""The prospectivity job end to end on the synthetic survey (tiny MFAF members, one epoch)."""

import glob
import json
import os

import numpy as np
import pytest
import yaml

from minseg.config.schema import MinsegConfig
from minseg.enums import MemberStatus
from minseg.synth.config import SurveySynth
from minseg.io.geotiff import read_geotiff
from minseg.synth.survey import write_survey
from tests.support.documents import every_record_is_strict_json

ELEMENTS = ["Au", "As", "Sb", "Cu", "Pb", "Zn", "Ag", "Ba", "Mn", "Hg"]
TINY = {"dilation_rates": [1, 2, 4], "branch_channels": 8}


def prospect_config(root, **changes) -> MinsegConfig:
    member = {"model": "mfaf", "stages": [{"epochs": 1, "batch_size": 16}], "scaling": {"cpus_per_worker": 0.5},
              "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.2, "weight_decay": 1e-4},
              "schedule": {"name": "step", "step_epochs": 30, "gamma": 0.6}, "loss": {"name": "self_distillation"}}
    prospect = {
        "samples": {"uri": f"{root}/survey/samples.csv", "x": "x", "y": "y", "crs": "EPSG:3067", "id": "sample_id",
                    "elements": {e: e for e in ELEMENTS}},
        "deposits": {"uri": f"{root}/survey/deposits.geojson", "id": "deposit_id"},
        "rasters": [{"uri": f"{root}/survey/lithology.tif", "name": "lithology", "kind": "categorical",
                     "max_classes": 3}],
        "lines": [{"uri": f"{root}/survey/faults.geojson", "name": "fault_distance"}],
        # the survey spans 350-380 km E; the grid stops 3 km short, so a deposit near the east edge falls outside
        "grid": {"crs": "EPSG:3067", "cell_m": 250, "extent": [350000, 7450000, 377000, 7480000]},
        "screening": {"max_elements": 3, "critical_z": 1.0},
        "windows": {"size": 16, "stride": 6, "max_negatives": 150},
        "cv": {"folds": 2},
        "prediction": {"stride": 4, "tile": 40, "member_scores": True},
        "training": {"defaults": member, "members": [
            {"name": "mfaf-r18", "model_options": {"backbone": "resnet18", "width": 0.125, **TINY}},
            {"name": "mfaf-shuffle", "model_options": {"backbone": "shufflenetv2", "width": 0.25, **TINY},
             "bagging": {"fraction": 0.8}}]},  # a bootstrap sample of each trial's windows
    }
    prospect.update(changes)
    return MinsegConfig.model_validate({"run": {"name": "t", "output_uri": f"{root}/out"},
                                        "ray": {"task_cpus": 0.25}, "prospect": prospect})


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("prospect")
    write_survey(f"{root}/survey", SurveySynth(n_samples=500, width_m=30000, height_m=30000, cell_m=250,
                                               n_deposits=16, n_faults=10), seed=3)
    return root


def test_end_to_end_on_the_synthetic_survey(survey, ray_session):
    from minseg.geo.prospect import map_prospectivity, output_uri

    config = prospect_config(survey)
    result = map_prospectivity(config)
    summary = result.document
    out = output_uri(config)
    assert json.loads(open(f"{out}/summary.json").read())["targets"] == result.targets
    assert every_record_is_strict_json(out, skip=("ray",)) > 20  # summary, metrics, members: no bare NaN
    fold_keys = ["fold", "train_windows", "train_deposit_windows", "test_windows", "dropped_for_overlap", "balance",
                 "thin", "thin_sides"]
    assert [sorted(f) for f in summary["folds"]] == [sorted(fold_keys)] * 2

    probability, geometry, nodata = read_geotiff(f"{out}/prospectivity.tif")
    uncertainty, geometry_u, _ = read_geotiff(f"{out}/uncertainty.tif")
    assert geometry.epsg == 3067 and geometry == geometry_u
    assert (geometry.x0, geometry.y0, geometry.pixel_width, geometry.rows, geometry.cols) == (350000, 7480000, 250, 120, 108)
    inside = np.isfinite(probability)
    assert inside.mean() > 0.9 and ((probability[inside] >= 0) & (probability[inside] <= 1)).all()
    assert (uncertainty[inside] >= 0).all() and np.isnan(nodata)
    import rasterio

    with rasterio.open(f"{out}/prospectivity.tif") as source:  # GDAL agrees on the georeferencing
        assert source.crs.to_epsg() == 3067 and tuple(source.transform)[:6] == (250, 0, 350000, 0, -250, 7480000)
    assert result.members and all(m.status is MemberStatus.DONE for m in result.members)
    assert len(result.members) == 2 * (2 + 1)  # 2 members x (2 folds + the final run)
    from minseg.io.storage import Storage
    from minseg.train.checkpoint import load_checkpoint

    models = survey / "out" / "t" / "prospect" / "prospectivity" / "models"
    reports = [fold["balance"] for fold in summary["folds"]]
    for trial, real in [(models / "fold1", reports[0]["positives"] + reports[0]["negatives"]),
                        (models / "fold2", reports[1]["positives"] + reports[1]["negatives"]),
                        (models, summary["windows"]["total"])]:  # the bagged member: its own draw of real windows
        full, bagged = (load_checkpoint(Storage(), str(trial), name) for name in ("mfaf-r18", "mfaf-shuffle"))
        documents = [json.loads(open(f"{c.uri}/member.json").read()) for c in (full, bagged)]
        sample = documents[1]["bagging_sample"]
        assert full.state["train_tiles"] > real  # balanced: SMOTE windows and noise copies after the real ones
        assert sum(sample.values()) == round(0.8 * real) and max(int(i) for i in sample) < real
        assert bagged.state["train_tiles"] > sum(sample.values())  # its own sample, balanced
        balanced = documents[1]["bagging_balance"]  # its own balancing report
        assert balanced["positives"] + balanced["negatives"] == sum(sample.values()) and balanced["smote"] > 0
        assert "bagging_sample" not in documents[0]

    # screening: the survey's halo elements are found (Au/As/Sb/Ag carry the orogenic-Au halos)
    screening = open(f"{out}/screening/screening.csv").read()
    assert screening.splitlines()[0].startswith("element,auc,z_auc")
    assert set(result.kept_elements) <= {"Au", "As", "Sb", "Ag", "Cu", "Bi", "W", "Hg"}
    assert result.channels[: len(result.kept_elements)] == result.kept_elements

    metrics = result.metrics
    assert len(metrics["folds"]) == 2 and metrics["prediction_rate"]["deposits"] >= 2
    assert 0 <= metrics["prediction_rate"]["top_10_percent"] <= 100
    assert metrics["windows"]["windows"] > metrics["windows"]["positives"] > 0
    # each member alone on each fold's held-out windows (an ablation's table)
    member_rows = open(f"{out}/cv/member_scores.csv").read().splitlines()
    assert member_rows[0] == "fold,member,accuracy,auc,recall,f1" and len(member_rows) == 1 + 2 * 2
    assert set(metrics["members"]) == {"mfaf-r18", "mfaf-shuffle"} and metrics["members"]["mfaf-r18"]["folds"] == 2
    for fold in summary["folds"]:  # spatial CV: overlapping training windows were dropped, balancing ran
        assert fold["train_windows"] > 0 and fold["balance"]["smote"] + fold["balance"]["noise"] > 0

    assert summary["deposits"]["outside_grid"], "a deposit east of the grid is reported"
    outside = open(f"{out}/inputs/samples_outside_grid.csv").read().splitlines()  # so are the samples east of it
    assert outside[0] == "sample,x,y" and len(outside) - 1 == summary["samples_outside_grid"] > 0
    assert open(f"{out}/inputs/deposits_outside_grid.csv").read().startswith("deposit,x,y")
    header = open(f"{out}/targets.csv").read().splitlines()[0]
    assert header.startswith("target_id,cells,area_km2,max_score,mean_score,centroid_x,centroid_y")
    targets = json.loads(open(f"{out}/targets.geojson").read())
    assert len(targets["features"]) == result.targets > 0
    curves = open(f"{out}/rate_curves.csv").read()
    assert "prediction rate" in curves and "success rate" in curves
    for name in ("prospectivity.png", "rate_curves.png", "cv/fold1/prospectivity.tif", "evidence/Au.tif",
                 "inputs/samples.json", "models/members.csv"):
        assert (survey / "out" / "t" / "prospect" / "prospectivity" / name).exists(), name

    # member scores come from the ensemble's own pass (here through Ray Data's actor pool): each column is that
    # member's P(ore) as it scores alone (here an actor object called in the test process)
    import ray

    from minseg.geo.predict import WindowEnsemble, score_windows
    from minseg.geo.prospect import trial_members

    refs = trial_members(config.prospect, result.members, Storage(), str(models), None, len(result.channels))
    padded = np.random.default_rng(0).normal(size=(40, 40, len(result.channels))).astype(np.float32)
    centres = np.array([[0, 0], [12, 5], [23, 20]])  # grid cells of a 24 x 24 grid, padded by 8
    both = score_windows(refs, padded, 16, {"some": centres}, config.prospect.prediction, Storage())["some"]
    alone = WindowEnsemble(refs[1:], [ray.put(padded)], 16, config.prospect.prediction, Storage())(
        {"key": ["some"], "centres": [json.dumps(centres.tolist())]})["members"][0][:, 0]
    assert both.members.shape == (3, 2) and not np.allclose(both.members[:, 0], both.members[:, 1], atol=1e-4)
    assert np.allclose(both.members[:, 1], alone, rtol=1e-5, atol=1e-6)  # other thread counts: not bit-identical
    assert np.allclose(both.mean, both.members.mean(1)) and np.allclose(both.std, both.members.std(1))
    # an irregular study edge (an IDW radius, nodata in a raster): blocks whose middle lies outside still score the
    # study cells they hold (once left NaN, and a deposit there ranked as captured at 0 % of the area)
    from minseg.geo.predict import predict_map

    study = np.ones((24, 24), bool)
    study[:3], study[10:, 21:] = False, False  # with stride 4, the middles of the first block row lie outside
    probability, uncertainty, _ = predict_map(refs, padded, 16, study, config.prospect.prediction, Storage())
    assert np.isfinite(probability[study]).all() and np.isnan(probability[~study]).all()
    assert np.isfinite(uncertainty[study]).all()

    # --resume with a member's settings changed would keep members the config no longer describes: refused up front,
    # the finished run left as it was
    from minseg.errors import InputError

    changed = prospect_config(survey)
    changed.prospect.training.members[1].bagging.fraction = 0.5
    written = open(f"{out}/summary.json").read()
    at = "prospect/prospectivity/models"
    with pytest.raises(InputError, match=rf"mfaf-shuffle: bagging\.fraction: 0\.8 -> 0\.5 \(its checkpoints: \S+"
                                         rf"{at}/fold1/members/mfaf-shuffle, \S+{at}/fold2/members/mfaf-shuffle,"
                                         rf" \S+{at}/members/mfaf-shuffle\)") as refused:
        map_prospectivity(changed, resume=True)
    assert "mfaf-r18" not in str(refused.value) and open(f"{out}/summary.json").read() == written

    # --resume of the same job keeps every finished member (a mapping step that failed is simply run again); what an
    # earlier run wrote and this one does not (here a third fold's map) is removed, not left looking current; the
    # finished run stays until the new one is complete (written beside it, then put in place), someone's own file in
    # the folder stays, and what the new run records names where it ends up, not where it was written
    stale = survey / "out" / "t" / "prospect" / "prospectivity" / "cv" / "fold3" / "prospectivity.tif"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's")
    (survey / "out" / "t" / "prospect" / "prospectivity" / "notes.txt").write_text("mine")
    again = map_prospectivity(config, resume=True)
    assert not stale.parent.exists() and (survey / "out" / "t" / "prospect" / "prospectivity" / "cv" / "fold2").is_dir()
    assert [m.finished_at for m in again.members] == [m.finished_at for m in result.members]
    assert again.document["channels"] == summary["channels"]
    # a rerun stopped beside the finished run (here one trial of one member checkpointed in its staging folder),
    # resumed: it continues its own trials and takes those of the finished run that fit (not trained again)
    from minseg.io.storage import staging_folder

    Storage().copy_files(f"{out}/models/fold1/members/mfaf-r18",
                         f"{staging_folder(out, 'prospect')}/models/fold1/members/mfaf-r18")
    third = map_prospectivity(config, resume=True)
    assert [m.finished_at for m in third.members] == [m.finished_at for m in result.members]
    assert open(f"{out}/notes.txt").read() == "mine" and not os.path.exists(f"{out}/.minseg-redo")
    assert not [name for _, _, names in os.walk(out) for name in names if "minseg-tmp" in name]  # no scratch links
    recorded = {path: open(path).read() for path in glob.glob(f"{out}/**/*.json", recursive=True)
                + glob.glob(f"{out}/**/*.csv", recursive=True)}
    assert not [path for path, text in recorded.items() if ".minseg-redo" in text]
    assert all(str(m.last_checkpoint).startswith(f"{out}/models/") for m in again.members)
    # the same members on other evidence (no fault-distance layer: other channels, other windows' values): the
    # finished members would map inputs they never saw (with another channel count, they would not even load)
    with pytest.raises(InputError, match=rf"trained on other data than this run gives them .*: \S+{at}/fold1/"
                                         rf"members/mfaf-r18, \S+{at}/fold1/members/mfaf-shuffle, .*{at}/members/"
                                         r"mfaf-shuffle\. Write the run elsewhere"):
        map_prospectivity(prospect_config(survey, lines=[]), resume=True)
    # refused after its inputs and evidence were written: into the staging folder; the finished run is as it was
    assert {path: open(path).read() for path in recorded} == recorded
    assert os.path.exists(f"{out}/.minseg-redo/prospect/evidence/Au.tif")


def test_bad_inputs_stop_the_cli_with_the_key_named(survey, ray_session, capsys, tmp_path):
    from minseg.cli import main

    config = prospect_config(survey).model_dump(mode="json", exclude_none=True)
    config["prospect"]["samples"].pop("crs")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    assert "give it in the config as prospect.samples.crs" in capsys.readouterr().err
    config = prospect_config(survey, windows={"size": 12}).model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    assert ("prospect.windows.size: 12 is below the 16x16 that members 'mfaf-r18' (mfaf), 'mfaf-shuffle' (mfaf) need"
            in capsys.readouterr().err)
    config = prospect_config(survey).model_dump(mode="json", exclude_none=True)
    config["prospect"]["training"]["members"][0]["augmentation"] = {"exposure": 0.2}  # photographs' jitter on maps
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    assert "prospect.training.members[0].augmentation: map windows are augmented by prospect.augmentation" in \
        capsys.readouterr().err
    # a model option the model refuses, a checkpoint metric of no class: before any input is read (the samples file
    # does not exist), every problem at once, and `config validate` says the same (they were found after the
    # evidence was built: a member "not started", the job failing with no member trained)
    config = prospect_config(survey).model_dump(mode="json", exclude_none=True)
    config["prospect"]["samples"]["uri"] = str(tmp_path / "no-such.csv")
    config["prospect"]["training"]["members"][0]["model_options"]["width"] = -1
    config["prospect"]["training"]["members"][1]["checkpoint_metric"] = "iou:gold"
    path.write_text(yaml.safe_dump(config))
    for command in (["prospect", "-c", str(path)], ["config", "validate", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "prospect.training.members[mfaf-r18]: width must be a number above 0" in err, err
        assert "prospect.training.members[mfaf-shuffle]: checkpoint_metric: unknown class 'gold'" in err
        assert "no-such.csv" not in err and "Traceback" not in err
    # a prediction pool no node can hold: said before the members train for hours, not after
    config = prospect_config(survey, prediction={"gpus_per_actor": 1}).model_dump(mode="json", exclude_none=True)
    config["run"]["name"] = "gpu-pool"
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    assert "prospect.prediction.gpus_per_actor 1 GPUs" in capsys.readouterr().err
    assert not list((survey / "out" / "gpu-pool").rglob("members.json"))  # nothing trained


@pytest.mark.parametrize("fault", ["degrees", "swapped", "stray"])
def test_samples_that_do_not_fit_the_grid_are_refused(survey, ray_session, capsys, tmp_path, fault):
    """Coordinates read in the wrong CRS (metres declared as degrees: they do not even project), x and y swapped
    (no sample on the grid: the interpolation would fill it from samples thousands of km away), or one sample typed
    wrong while the grid spans the samples' bounds (the grid would stretch over ground nobody sampled)."""
    import pandas as pd

    from minseg.cli import main

    changes = {}
    if fault == "stray":
        table = pd.read_csv(f"{survey}/survey/samples.csv")
        table.loc[5, "x"] = 0.0
        table.to_csv(tmp_path / "samples.csv", index=False)
        changes["grid"] = {"crs": "EPSG:3067", "cell_m": 250, "buffer_m": 1000}
    config = prospect_config(survey, **changes).model_dump(mode="json", exclude_none=True)
    samples = config["prospect"]["samples"]
    if fault == "degrees":
        samples["crs"] = "EPSG:4326"
    elif fault == "swapped":
        samples["x"], samples["y"] = "y", "x"
    else:
        samples["uri"] = str(tmp_path / "samples.csv")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert {"degrees": "500 of 500 rows cannot be used (no usable coordinates or a value that is not a number), "
                       "more than half: the table is probably read wrongly. First problems: samples.csv row 1 x '",
            "swapped": "prospect.samples: none of the 500 samples lies on the grid (EPSG:3067, E 350000-377000",
            "stray": "1 sample(s) lie farther from every other one than the survey is wide"}[fault] in err, err
    if fault == "degrees":
        assert "the coordinates do not project from EPSG:4326 to EPSG:3067: are they in EPSG:4326?" in err


def test_deposits_off_the_grid_are_named_as_such(survey, ray_session, capsys, tmp_path):
    """Deposits in another place than the evidence (here moved 100 km east, as a wrong CRS or a swapped pair of
    columns would): said in those words, not as "too few spatial blocks hold deposits; lower cv.folds"."""

    from minseg.cli import main

    deposits = json.loads(open(f"{survey}/survey/deposits.geojson").read())
    for feature in deposits["features"]:
        feature["geometry"]["coordinates"][0] += 100_000
    (tmp_path / "deposits.geojson").write_text(json.dumps(deposits))
    config = prospect_config(survey).model_dump(mode="json", exclude_none=True)
    config["prospect"]["deposits"]["uri"] = str(tmp_path / "deposits.geojson")
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["prospect", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"prospect.deposits: {len(deposits['features'])} deposit(s) read, 0 on the grid, 0 in the study area" in err


def test_an_output_folder_with_someone_elses_inputs_is_refused_untouched(survey, tmp_path, capsys):
    """The re-run cleanup removes inputs/, evidence/, screening/ and cv/ of a folder the job wrote; another folder's
    own inputs/ is neither deleted nor written into."""
    from minseg.errors import InputError
    from minseg.geo.prospect import map_prospectivity

    (tmp_path / "project" / "inputs").mkdir(parents=True)
    (tmp_path / "project" / "inputs" / "my_samples.csv").write_text("mine")
    with pytest.raises(InputError, match=r"project holds inputs/ that minseg did not write; choose another output"):
        map_prospectivity(prospect_config(survey, output_uri=str(tmp_path / "project")))
    assert (tmp_path / "project" / "inputs" / "my_samples.csv").read_text() == "mine"
    # given as --out, the message names --out (it named prospect.output_uri)
    from minseg.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prospect_config(survey).model_dump(mode="json", exclude_none=True)))
    assert main(["prospect", "-c", str(path), "--out", str(tmp_path / "project")]) == 2
    assert f"minseg: error: --out: {tmp_path / 'project'} holds inputs/ that minseg did not write" in \
        capsys.readouterr().err
    # a folder of another command (a training run's members.json) is refused as such, before the job marks it its own
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "members.json").write_text("{}")
    with pytest.raises(InputError, match=r"^prospect.output_uri: .*run holds the outputs of minseg train"):
        map_prospectivity(prospect_config(survey, output_uri=str(tmp_path / "run")))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["members.json"]


def test_a_replacement_cut_short_is_completed_by_the_next_run(tmp_path):
    """A complete run staged beside a finished one, killed while its files were being put in place (the folder has
    no summary.json, some files are new): the next run into the folder completes it before anything else."""
    from minseg.geo.prospect import working_folder
    from minseg.io.storage import staging_folder
    from minseg.io.storage import Storage

    out, storage = str(tmp_path / "out"), Storage()
    for name, text in {".minseg-prospect": "marker", "prospectivity.tif": "old", "cv/fold3/prospectivity.tif": "old",
                       "models/members.csv": "old", "notes.txt": "mine"}.items():
        storage.write_text(f"{out}/{name}", text)
    staged = {"summary.json": "new", "prospectivity.tif": "new", "cv/fold1/prospectivity.tif": "new",
              "models/members.csv": "new"}
    for name, text in staged.items():
        storage.write_text(f"{staging_folder(out, 'prospect')}/{name}", text)
    # completed: a finished run, kept by the next one
    assert working_folder(storage, out) == staging_folder(out, "prospect")
    assert {info.uri[len(out) + 1:]: storage.read_text(info.uri) for info in storage.list(out + "/")} == {
        ".minseg-prospect": "marker", "notes.txt": "mine", **staged}
    # a staging folder without summary.json is a run that never finished: not put in place
    storage.write_text(f"{staging_folder(out, 'prospect')}/prospectivity.tif", "unfinished")
    assert working_folder(storage, out) == staging_folder(out, "prospect")
    assert storage.read_text(f"{out}/prospectivity.tif") == "new"
    # one killed while its staging folder was deleted (summary.json, which goes last, still there; the rest partly
    # gone) was put in place already: the staging folder goes, the published run stays whole (once, it was
    # "put in place" again: every file of cv/ and models/ that the remains lacked was deleted)
    storage.write_text(f"{staging_folder(out, 'prospect')}/summary.json", "new")
    assert working_folder(storage, out) == staging_folder(out, "prospect")
    assert {info.uri[len(out) + 1:]: storage.read_text(info.uri) for info in storage.list(out + "/")} == {
        ".minseg-prospect": "marker", "notes.txt": "mine", **staged}


def test_a_trials_signature_says_how_its_windows_were_balanced():
    """SMOTE and noise copies are added to a trial's real windows after its windows are chosen: other balance
    settings, or another seed to draw them from, are other training data (a resume must not keep members trained on
    them); at their defaults the digest is the one recorded before they were part of it."""
    from types import SimpleNamespace

    from minseg.geo.config import BalanceSettings
    from minseg.geo.prospect import trial_signature

    windows = SimpleNamespace(rows=np.array([3, 9]), cols=np.array([4, 8]), labels=np.array([1, 0]))
    stats = {"mean": [0.5, 1.0], "std": [1.0, 2.0]}

    def signature(balance=BalanceSettings(), seed=0):
        return trial_signature(["Au", "As"], stats, windows, 16, balance, seed)

    assert signature() == "6fcd6587ff4600a5"  # as 542d975 computed it: its runs' checkpoints still resume
    assert len({signature(), signature(BalanceSettings(noise_copies=3)), signature(BalanceSettings(smote=False)),
                signature(seed=1)}) == 4
    assert signature(BalanceSettings(noise_copies=3)) == signature(BalanceSettings(noise_copies=3))


def test_a_resumed_rerun_takes_only_the_finished_trials_that_fit(tmp_path):
    """``take_finished_members``: of the finished run's trials, only one that finished, whose member settings and
    training data are this run's (a bagged member's sample expanded into epochs as now), and that this run has no
    checkpoint of; a damaged record is passed over (trained again), and a failed try's leftovers in this run's
    folder go with the copy."""
    from dataclasses import asdict

    from minseg.data.config import AugmentSettings
    from minseg.enums import MemberStatus
    from minseg.geo.config import BalanceSettings
    from minseg.geo.prospect import TrialData, WindowSource
    from minseg.io.runs import member_uri, trial_uri
    from minseg.io.storage import Storage, join_uri
    from minseg.train.checkpoint import write_checkpoint
    from minseg.train.config import MemberSettings
    from minseg.train.ensemble import BAGGING_BUILD, MemberResult, take_finished_members

    storage, published, run = Storage(), str(tmp_path / "published"), str(tmp_path / "run")
    members = [MemberSettings.model_validate({"name": name, "model": "mfaf", "stages": [{"epochs": 1}], **bagging})
               for name, bagging in (("m1", {}), ("m2", {}), ("bag", {"bagging": {"fraction": 0.8}}))]
    empty = np.zeros((0,), np.int64)
    trials = {fold: TrialData(["Au"], np.zeros((4, 4, 1)), np.zeros((2, 4, 4, 1)), np.array([0, 1]), empty, empty,
                              [], [], 2, signature=f"s{fold}") for fold in (0, 1, None)}
    source = WindowSource(trials, "none", BalanceSettings())

    def finished(root, fold, member, status=MemberStatus.DONE, signature=None, lr=None, build=None):
        settings = member.model_dump(mode="json")
        if lr is not None:
            settings["optimizer"]["lr"] = lr
        trial = trial_uri(root, fold)
        state = {"epochs_done": 1, "data_signature": signature or f"s{fold}", "bagging_build": build}
        write_checkpoint(storage, trial, member.name, "epoch-0001", {}, None, state, settings, {}, {}, False)
        storage.write_json(join_uri(member_uri(trial, member.name), "result.json"),
                           asdict(MemberResult(member.name, "mfaf", status, fold=fold)))

    m1, m2, bag = members
    finished(published, 0, bag)  # bagged, its sample balanced before SMOTE took distinct windows (no build recorded)
    finished(published, 1, bag, build=BAGGING_BUILD)  # fits: taken
    finished(published, 0, m1)  # fits: taken, over a failed try's leftovers here
    storage.write_text(join_uri(member_uri(trial_uri(run, 0), "m1"), "error.txt"), "a failed try")
    finished(published, 0, m2, status=MemberStatus.FAILED)  # did not finish
    finished(published, 1, m1, lr=0.5)  # other settings
    finished(published, 1, m2)  # fits: taken
    finished(published, None, m1, signature="other")  # other windows
    finished(published, None, m2)  # this run has its own
    finished(run, None, m2, signature="sNone")
    storage.write_text(join_uri(member_uri(published, "m2"), "result.json"), "{not json")  # and a damaged record
    assert take_finished_members(storage, published, run, members, source, 0, AugmentSettings()) == [
        "fold1/m1", "fold2/m2", "fold2/bag"]
    assert not storage.exists(join_uri(member_uri(trial_uri(run, 0), "m1"), "error.txt"))
    assert storage.read_json(join_uri(member_uri(trial_uri(run, 1), "m2"), "result.json"))["status"] == "done"
    assert not storage.exists(member_uri(trial_uri(run, 1), "m1") + "/result.json")
