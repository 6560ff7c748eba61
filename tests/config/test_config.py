import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from minseg.config import ConfigError, MinsegConfig, load_config, validate_config
from minseg.enums import TiffCompression


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_valid_file_becomes_typed_objects(tmp_path):
    config = load_config(
        write(tmp_path, "run: {name: demo, seed: 7}\nsynth:\n  slide: {height: 1000, width: 900, compression: zstd}\n"),
        MinsegConfig,
    )
    assert config.run.seed == 7
    assert config.synth.slide.compression is TiffCompression.ZSTD
    assert config.storage.max_attempts == 8  # defaults filled in


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("run: {nmae: x}", "run.nmae", "unknown key"),
        ("synth: {sections: {count: many}}", "synth.sections.count", "valid integer"),
        ("synth: {sections: {count: 2.5}}", "synth.sections.count", "valid integer"),
        ("synth: {slide: {tile: 500}}", "synth.slide.tile", "multiple of 16"),
        ("synth: {slide: {compression: lzw}}", "synth.slide.compression", "'none', 'deflate', 'zstd' or 'jpeg'"),
        ("storage: {endpoint_url: 127.0.0.1:9000}", "storage.endpoint_url", "http:// or https://"),
        ("storage: {multipart_part_size_mib: 1}", "storage.multipart_part_size_mib", "greater than or equal to 5"),
        ("bogus_section: {}", "bogus_section", "unknown key"),
        ("synth: {sections: null, slide: null, survey: null}", "synth", "nothing to synthesise"),
        # gt=0 alone lets infinity through: no config number may be infinite or NaN
        ("segment: {pixel_size_um: .inf}", "segment.pixel_size_um", "finite number"),
        ("measure: {pixel_size_um: .nan}", "measure.pixel_size_um", "finite number"),
        # a bound alone does not say which unit the number is in (1e6 meant as 1 m): a key's unit is its suffix
        ("measure: {pixel_size_um: 1.0e+6}", "measure.pixel_size_um", "less than 1000000 µm (got 1000000.0)"),
        ("segment: {pixel_size_um: 0}", "segment.pixel_size_um", "greater than 0 µm (got 0)"),
        ("ray: {object_store_mib: 10}", "ray.object_store_mib", "MiB (got 10)"),
        ("mineralogy: {densities: {pyrite: .inf}}", "mineralogy.densities.pyrite", "finite number"),
        ("mineralogy: {size_fractions: [20, .inf]}", "mineralogy.size_fractions[1]", "finite number"),
        # inputs are divided by the std: 0 gives infinities, a negative one flips the channel
        ("data: {sources: [{uri: x}], normalization: {mean: [1, 2, 3], std: [0, 64, 64]}}", "data.normalization",
         "std must be finite numbers above 0"),
        ("data: {sources: [{uri: x}], normalization: {mean: [1, 2, 3], std: [64, -64, 64]}}", "data.normalization",
         "got -64.0"),
        ("evaluation: {precision: half}", "evaluation.precision", "'auto', 'fp32', 'bf16' or 'fp16'"),
        # a typo here was found after the whole ranking pass
        ("evaluation: {rank_key: mio}", "evaluation.rank_key", "unknown metric 'mio'; one of miou, "),
        ("evaluation: {rank_key: 'iuo:pyrite'}", "evaluation.rank_key", "unknown per-class metric 'iuo'"),
        ("score: {precision: half}", "score.precision", "'auto', 'fp32', 'bf16' or 'fp16'"),
        ("training: {members: [{name: a, model: unet, scaling: {workers: 2, gpus_per_worker: 0.5}}]}",
         "training.members[0].scaling", "need a GPU each"),
        # names become file and folder names: one rule, one message, a length a file system takes with minseg's
        # prefixes and suffixes
        ("run: {name: " + "r" * 101 + "}", "run.name", "at most 100 characters, got 101"),
        ("training: {members: [{name: 'unet a', model: unet}]}", "training.members[0].name",
         "a name of ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("evaluation: {name: .hidden}", "evaluation.name", "starting with a letter or digit"),
        # outputs are copied to Windows, where these names cannot be files or folders
        ("training: {members: [{name: aux, model: unet}]}", "training.members[0].name",
         "aux is a device name on Windows"),
        ("run: {name: nul.v2}", "run.name", "nul is a device name on Windows"),
        ("run: {name: run.}", "run.name", "ends with a dot or a space"),
        ("run: {name: 0815}", "run.name",
         "Input should be a valid string (got 815): YAML (and --set) read digits as a number"),
        ("prospect: {name: " + "p" * 200 + "}", "prospect.name", "(got 'ppppp"),
        # an element names its evidence file: ../x wrote outside the run's folder
        ("prospect: {samples: {uri: s.csv, x: x, y: y, crs: 'EPSG:32633', elements: {../x: Au}}}",
         "prospect.samples.elements.../x", "a name of ASCII letters"),
        # pydantic reads true as 1: a one-epoch run, a learning rate of 1, a density of 1 g/cm³
        ("synth: {sections: {count: true}}", "synth.sections.count", "a number is needed, not true / false"),
        ("segment: {pixel_size_um: false}", "segment.pixel_size_um", "a number is needed, not true / false"),
        ("mineralogy: {densities: {pyrite: yes}}", "mineralogy.densities", "a number is needed, not true"),
        ("mineralogy: {size_fractions: [20, true]}", "mineralogy.size_fractions", "a number is needed, not true"),
        ("training: {members: [{name: a, model: unet, optimizer: {lr: true}}]}", "training.members[0].optimizer.lr",
         "a number is needed, not true"),
        ("training: {members: [{name: a, model: unet, loss: {name: focal, focal_alpha: [0.5, true]}}]}",
         "training.members[0].loss.focal_alpha", "a number is needed, not true"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, MinsegConfig)
    message = str(info.value)
    assert f"{path}: {key}: " in message
    assert reason in message


def test_list_positions_in_key_path():
    from pydantic import BaseModel

    from minseg.config import StrictModel

    class Member(StrictModel):
        loss: str

    class Root(StrictModel):
        members: list[Member]

    with pytest.raises(ConfigError, match=r"x.yaml: members\[1\].loss: required value is missing"):
        validate_config({"members": [{"loss": "ce"}, {}]}, Root, source="x.yaml")
    assert issubclass(Root, BaseModel)


def test_credentials_are_refused_in_files(tmp_path):
    path = write(tmp_path, "storage:\n  aws_secret_access_key: abc123\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, MinsegConfig)
    assert "storage.aws_secret_access_key: credentials must not be stored in config files" in str(info.value)
    assert "abc123" not in str(info.value)


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "run:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"job.yaml: line \d+, column \d+: not valid YAML"):
        load_config(path, MinsegConfig)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", MinsegConfig)


def test_environment_and_cli_overrides(tmp_path):
    path = write(tmp_path, "storage: {endpoint_url: 'http://file:9000'}\nrun: {seed: 1}\n")
    environ = {"MINSEG__STORAGE__ENDPOINT_URL": "http://env:9000", "MINSEG__RUN__SEED": "2"}
    config = load_config(path, MinsegConfig, environ=environ)
    assert config.storage.endpoint_url == "http://env:9000"
    assert config.run.seed == 2
    config = load_config(path, MinsegConfig, overrides={"run.seed": "3"}, environ=environ)
    assert config.run.seed == 3
    with pytest.raises(ConfigError, match="environment MINSEG__RUN__SEED: run.seed: .*valid integer"):
        validate_config({}, MinsegConfig, source="environment", environ={"MINSEG__RUN__SEED": "abc"})
    with pytest.raises(ConfigError, match="--set storage.secret_key: credentials are read from AWS_"):
        validate_config({}, MinsegConfig, overrides={"storage.secret_key": "x"})
    # `iou:` is the text typed, not a mapping: the reason names it (YAML alone read {iou: null}, "a valid string")
    with pytest.raises(ConfigError, match=r"--set evaluation.rank_key: unknown metric 'iou:'.*<class>"):
        validate_config({}, MinsegConfig, overrides={"evaluation.rank_key": "iou:"})
    written = validate_config({}, MinsegConfig, overrides={"segment.formats": "[zarr, tiff]", "run": "{name: r2}"})
    assert [str(f) for f in written.segment.formats] == ["zarr", "tiff"] and written.run.name == "r2"  # flow style


def test_bundled_configs_validate():
    from pathlib import Path

    from minseg.cli import main

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs, "configs/ should hold example configs"
    for path in configs:
        load_config(path, MinsegConfig)
        assert main(["config", "validate", str(path)]) == 0, path  # members build, metrics and weights fit


def test_validate_checks_what_the_models_say_before_any_data(tmp_path, capsys):
    """``minseg config validate`` is the check before submitting a job: a member the model registry, the loss or
    the class list would refuse once training starts is named now (the file's own schema passed)."""
    from minseg.cli import main

    members = [{"name": "ok"}, {"name": "typo", "model": "unett"}, {"name": "thin", "model_options": {"width": 0}},
               {"name": "weights", "loss": {"class_weights": [1, 2]}},
               {"name": "metric", "checkpoint_metric": "iou:chalcopyrite"},
               {"name": "init", "init": {"uri": str(tmp_path / "missing.pt")}},
               {"name": "computed", "loss": {"class_weights": "median_frequency"}},  # needs the data: fine here
               {"name": "binary", "loss": {"name": "weighted_bce"}},  # the one-foreground-class loss, 3 classes
               {"name": "small", "model": "convnext_eca", "model_options": {"width": 0.125, "depth": "tiny"}},
               {"name": "strict", "model": "res_unet", "model_options": {"pad_mode": "strict"}}]  # 16-px tiles
    classes = [{"name": "background", "codes": [0]}, {"name": "pyrite", "codes": [1]}, {"name": "gangue", "codes": [2]}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "classes": {"classes": classes},
                                       "tiling": {"size": 16}},
        "training": {"defaults": {"model": "unet", "model_options": {"width": 0.25},
                                  "stages": [{"epochs": 1, "batch_size": 4}]}, "members": members}}))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    for says in ("training.members[typo]: unknown model 'unett'", "training.members[thin]: width must be",
                 "training.members[weights]: class_weights must list one value per class (3), got 2",
                 "training.members[metric]: checkpoint_metric: unknown class 'chalcopyrite'",
                 "training.members[binary]: loss weighted_bce is the binary loss of one foreground "
                 "class (the microplastic paper's), and this run has 3 classes",
                 "training.members[small]: model convnext_eca needs inputs of at least 32 x 32 pixels, and "
                 "data.tiling.size gives tiles of 16: raise data.tiling.size",
                 "training.members[strict]: model res_unet with pad_mode strict needs inputs whose sides are "
                 "multiples of 32 pixels, and data.tiling.size gives tiles of 16",
                 "training.members: all members of one run must share a task (their data is prepared once for it), "
                 "these do not: segmentation: ok, thin, weights, metric, init, computed, binary, strict; "
                 "classification: small",
                 "config.init_not_here"):  # a warning: the path may be the cluster's shared filesystem
        assert says in err, says
    assert "members[ok]" not in err and "members[computed]" not in err and "members[init]" not in err


def test_validate_asks_for_the_class_list_train_would_ask_for(tmp_path, capsys):
    """A segmentation run without data.classes: refused by train at once, so by validate too; a classifier's classes
    may come from its folders."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    for model, code in (("unet", 2), ("convnext_eca", 0)):
        path.write_text(yaml.safe_dump({
            "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "tiling": {"size": 64}},
            "training": {"defaults": {"stages": [{"epochs": 1, "batch_size": 4}]},
                         "members": [{"name": "a", "model": model, "model_options": {"width": 0.125}}]}}))
        assert main(["config", "validate", str(path)]) == code, model
        err = capsys.readouterr().err
        assert ("data.classes is required for segmentation sources" in err) == (code == 2), err
    demo = yaml.safe_load(path.read_text().replace("convnext_eca", "unet"))  # the demo's: the generator's classes
    path.write_text(yaml.safe_dump({**demo, "synth": {"seed": 0}}))
    assert main(["config", "validate", str(path)]) == 0


def test_errors_from_set_or_the_environment_blame_them_not_the_file(tmp_path, capsys):
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("run: {name: x}\nsegment: {actors: 1}\n")
    assert main(["config", "validate", str(path), "--set", "segment.actorz=3", "--set", "segment.batch_size=-1"]) == 2
    err = capsys.readouterr().err
    assert "--set segment.actorz: unknown key" in err
    assert "--set segment.batch_size: Input should be greater than or equal to 1" in err
    assert f"{path}:" not in err
    with pytest.raises(ConfigError, match="environment MINSEG__SEGMENT__ACTORS: segment.actors"):
        load_config(path, MinsegConfig, environ={"MINSEG__SEGMENT__ACTORS": "0"})
    # every problem at once: a value YAML cannot read no longer hides a misspelt key (said by its --set, not
    # "override:"), nor another --set's; what its typed text makes of its section is not said
    assert main(["config", "validate", str(path), "--set", "segment.actorz=,", "--set", "segment.batch_size=[1",
                 "--set", "segment.actors=x"]) == 2
    lines = sorted(line.strip() for line in capsys.readouterr().err.strip().splitlines()[1:])
    assert [line[:45] for line in lines] == ["--set segment.actors: Input should be a valid",
                                             "--set segment.actorz: unknown key (check spel",
                                             "--set segment.actorz: value ',' is not valid ",
                                             "--set segment.batch_size: value '[1' is not v"]
    with pytest.raises(ConfigError, match=r"environment MINSEG__SEGMENT__ACTORS: segment.actors: value '\{' is not"):
        load_config(path, MinsegConfig, environ={"MINSEG__SEGMENT__ACTORS": "{"})
    # a key under an unreadable value is not set (it failed as "cannot set a key inside 'segment'", hiding the
    # YAML problem); a --set of the same key wins over an unreadable variable, as over any
    with pytest.raises(ConfigError) as refused:
        load_config(path, MinsegConfig, overrides={"segment": "[", "segment.batch_size": "0"})
    assert refused.value.problems == [("segment", "value '[' is not valid YAML (expected the node content, but found "
                                                  "'<stream end>')")]
    assert load_config(path, MinsegConfig, overrides={"run.seed": "3"}, environ={"MINSEG__RUN__SEED": "["}).run.seed == 3
    # an empty value (YAML's null) says so: "Input should be a valid integer" alone did not say what was given
    with pytest.raises(ConfigError, match=r"--set segment.actors: Input should be a valid integer \(got null: an empty "
                                          r"value is null to YAML, `key:` in a file as `--set key=`\)"):
        load_config(path, MinsegConfig, overrides={"segment.actors": ""})
    path.write_text("run: {name: x}\nsegment: {actors: }\n")  # the file's own likewise
    with pytest.raises(ConfigError, match=rf"{path}: segment.actors: Input should be a valid integer \(got null"):
        load_config(path, MinsegConfig)
    path.write_text("run: {name: x}\nsegment: {actorz: 1}\n")  # the file's own mistakes still name the file
    with pytest.raises(ConfigError, match=f"{path}: segment.actorz: unknown key"):
        load_config(path, MinsegConfig, overrides={"segment.actors": "2"})
    # a check over a whole section (split ratios summing to 1) with a --set inside it: the file and the --set
    path.write_text("run: {name: x}\ndata: {sources: [{uri: d}], split: {train: 0.6, val: 0.2, test: 0.2}}\n")
    with pytest.raises(ConfigError, match=rf"{path} with --set data.split.train: data.split: train \+ val \+ test "
                                          "must sum to 1"):
        load_config(path, MinsegConfig, overrides={"data.split.train": "0.9"})


def test_a_bad_value_from_training_defaults_is_named_there_once():
    """``training.defaults`` is merged into every member before validation: a bad value there was reported once per
    member (``training.members[0].optimizer.lr``, ``[1]``, ...) and blamed on the file even when a --set gave it. It
    is now the defaults key's error, once, blamed on what set it; a member's own value stays the member's."""
    members = "training:\n  defaults: {model: unet, optimizer: {lr: -1}, stages: [{epochs: 1, batch_size: 2}]}\n" \
              "  members: [{name: a}, {name: b}, {name: c, optimizer: {lr: -2}}]\n"
    with pytest.raises(ConfigError) as info:
        validate_config(yaml.safe_load(members), MinsegConfig, source="job.yaml")
    message = str(info.value)
    assert message.count("job.yaml: training.defaults.optimizer.lr: Input should be greater than 0 (got -1)") == 1
    assert "job.yaml: training.members[2].optimizer.lr: Input should be greater than 0 (got -2)" in message
    assert "members[0]" not in message and "members[1]" not in message
    # a member's own list or model_options replace the defaults' whole: an error inside them is the member's
    own = members.replace("{name: a}", "{name: a, stages: [{epochs: 0}], model_options: {width: 0}}")
    with pytest.raises(ConfigError) as info:
        validate_config(yaml.safe_load(own), MinsegConfig, source="job.yaml")
    assert "training.members[0].stages[0].epochs" in str(info.value)
    # set from the command line: the --set is blamed, lists of the defaults included
    fine = yaml.safe_load(members.replace("lr: -1", "lr: 0.01").replace("lr: -2", "lr: 0.02"))
    with pytest.raises(ConfigError) as info:
        validate_config(fine, MinsegConfig, source="job.yaml", overrides={"training.defaults.stages.0.epochs": "0"})
    assert str(info.value).count("--set training.defaults.stages.0.epochs: training.defaults.stages[0].epochs: ") == 1
    # the prospectivity section's members have defaults too
    prospect = {"prospect": {"training": {"defaults": {"model": "mfaf", "optimizer": {"lr": 0},
                                                       "stages": [{"epochs": 1, "batch_size": 2}]},
                                          "members": [{"name": "a"}, {"name": "b"}]}}}
    with pytest.raises(ConfigError, match=r"<config>: prospect.training.defaults.optimizer.lr: ") as info:
        validate_config(prospect, MinsegConfig)
    assert "members[" not in str(info.value)
    # a member validator's error (at the member: checkpoint_mode against checkpoint_metric) about a key the defaults
    # set: that key's, once, blamed on the --set that gave it; a member setting the key itself keeps its own
    with pytest.raises(ConfigError) as info:
        validate_config(fine, MinsegConfig, source="job.yaml",
                        overrides={"training.defaults.checkpoint_mode": "min", "training.defaults.checkpoint_metric":
                                   "miou", "training.members.2.checkpoint_mode": "min"})
    message = str(info.value)
    assert message.count("--set training.defaults.checkpoint_mode: checkpoint_mode min would keep the worst") == 1
    assert "training.members[2]: checkpoint_mode min would keep" in message and "members[0]" not in message


def test_keys_in_a_union_are_named_as_written_without_pydantic_branch_labels(tmp_path):
    """Errors inside a union named the branch pydantic tried (``prospect.deposits.points.crs``, ``data.cache.bool``
    and ``data.cache.literal['auto']`` as two problems), so a --set of the key as written was not blamed either."""
    prospect = Path(__file__).resolve().parents[2] / "configs" / "prospect_synthetic.yaml"
    for override, says in (
            ("prospect.deposits.crs=bogus", "--set prospect.deposits.crs: not a CRS that PROJ knows"),
            ("prospect.barren={uri: 3}", "--set prospect.barren: prospect.barren.uri: Input should be a valid string"),
            ("prospect.deposits={id: x}", "prospect.deposits.uri: required value is missing"),
            # the raster branch's tag is also its key: a problem beside it and one in it
            ("prospect.deposits={raster: x.tif, band: 0}", "prospect.deposits.band: Input should be greater than or "
                                                           "equal to 1 (got 0)"),
            ("prospect.deposits={raster: 3}", "prospect.deposits.raster: Input should be a valid string (got 3)")):
        with pytest.raises(ConfigError) as info:
            load_config(prospect, MinsegConfig, overrides=dict([override.split("=", 1)]))
        assert says in str(info.value), (override, str(info.value))
        assert ".points." not in str(info.value) and ".raster." not in str(info.value)
    path = tmp_path / "c.yaml"
    path.write_text("run: {name: x}\ndata: {sources: [{uri: here}], cache: maybe}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, MinsegConfig)
    message = str(info.value)
    assert message.count("data.cache") == 1 and ".bool" not in message and "literal" not in message
    assert "Input should be a valid boolean, unable to interpret input; or Input should be 'auto' (got 'maybe')" in (
        message)
    path.write_text("run: {name: x}\ndata: {sources: [{uri: here}], cache: {x: 1}}\n")  # a mapping for a value
    with pytest.raises(ConfigError, match=r"data.cache: Input should be a valid boolean; or Input should be 'auto'$"):
        load_config(path, MinsegConfig)


def test_config_validate_says_member_problems_with_the_schemas_at_once(tmp_path, capsys):
    """A repeated member name, a misspelt data key or a member's own schema problem stopped validation before the
    models were looked at: an unknown model (or an option it refuses) was said only once those were mended."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    refused_twice = yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "tilling": {"size": 64}},
        "training": {"defaults": {"model": "unet", "model_options": {"width": -1},
                                  "stages": [{"epochs": 1, "batch_size": 4}]},
                     "members": [{"name": "a", "model": "unett"}, {"name": "a"}, {"name": "b"},
                                 {"name": "c", "optimizer": {"lr": -1}}]}})
    path.write_text(refused_twice)
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    for says in ("data.tilling: unknown key",
                 "training.members: member names must be unique (whatever their case), repeated: a",
                 "training.members[3].optimizer.lr: Input should be greater than 0",
                 "training.members[a]: unknown model 'unett'",
                 # member c is checked with its refused lr left out; not "all": the first a was not built
                 "training.members[a, b, c]: width must be",
                 "data.classes is required for segmentation sources"):  # the data section without its misspelt key
        assert f"{path}: {says}" in err, (says, err)
    assert "Traceback" not in err and "(all" not in err
    # with the schema's problems mended, what each job refuses before any work is said together: training's
    # members, the evaluation's rank key of no class (it was said only by `evaluate`, after loading its members)
    path.write_text(yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "classes": {"classes": [
            {"name": "background", "codes": [0]}, {"name": "pyrite", "codes": [1]}]}},
        "training": {"defaults": {"model": "unet", "model_options": {"width": -1},
                                  "stages": [{"epochs": 1, "batch_size": 4}]}, "members": [{"name": "a"}]},
        "evaluation": {"rank_key": "iou:pyrit"}}))
    width = "training.members[a]: width must be a number above 0 (a share of the paper's channels, e.g. 0.25), got -1.0"
    assert main(["config", "validate", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == [
        f"  {path}: {width}", f"  {path}: evaluation.rank_key: unknown class 'pyrit' in 'iou:pyrit'; classes: "
        "background, pyrite"]
    # each blamed on where it came from: the rank key on the --set that gives it
    assert main(["config", "validate", str(path), "--set", "evaluation.rank_key=iou:pyrt"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == [
        f"  {path}: {width}", "  --set evaluation.rank_key: unknown class 'pyrt' in 'iou:pyrt'; "
        "classes: background, pyrite"]
    path.write_text(refused_twice)
    # the member problems are blamed as when the schema passes, member by member: the file for member a, the
    # --set for member b
    assert main(["config", "validate", str(path), "--set", "training.members.b.model=unett"]) == 2
    err = capsys.readouterr().err
    assert f"  {path}, --set training.members.b.model: training.members[a, b]: unknown model 'unett'" in err, err
    # a file whose only problems are the schema's says those alone, as before
    path.write_text(yaml.safe_dump({"run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "x": 1}}))
    assert main(["config", "validate", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == [f"  {path}: data.x: unknown key (check spelling; "
                                                                "see docs/configuration.md)"]


def test_a_member_problem_every_member_shares_is_said_once(tmp_path, capsys):
    """A model option from ``training.defaults`` that the model refuses was one line per member (six for the
    LumenStone recipe); now one line for all, and one for the members that share a problem."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}]},
        "training": {"defaults": {"model": "unet", "model_options": {"width": -1},
                                  "stages": [{"epochs": 1, "batch_size": 4}]},
                     "members": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("width must be") == 1 and f"{path}: training.members (all 3): width must be" in err
    # a problem the file alone does not have is blamed on the --set options that bring it (not on the file)
    assert main(["config", "validate", str(path), "--set", "training.defaults.model_options.width=0.25", "--set",
                 "training.members.a.model=unett", "--set", "training.members.c.model=unett"]) == 2
    assert ("  --set training.members.a.model, --set training.members.c.model: training.members[a, c]: unknown model "
            "'unett'") in capsys.readouterr().err
    assert main(["config", "validate", str(path), "--set", "run.seed=4", "--set",
                 "training.defaults.model_options.width=-2"]) == 2
    err = capsys.readouterr().err
    assert "  --set training.defaults.model_options.width: training.members (all 3): width must be" in err
    assert main(["config", "validate", str(path), "--set", "run.seed=4"]) == 2  # the file's own problem: the file
    assert f"  {path}: training.members (all 3): width must be" in capsys.readouterr().err


def test_a_section_from_flags_blames_each_flag():
    """``validate_section`` (the command line's flags on top of a config's section): each problem names the flag
    that set the value, or the config for its own; a model validator's message that starts with a field is that
    field's."""
    from minseg.config import validate_section
    from minseg.inference.config import SegmentSettings

    with pytest.raises(ConfigError) as info:
        validate_section(SegmentSettings, {"level": -1, "actors": 0, "batch_size": 0}, "segment", "job.yaml",
                         {"level": "--level", "actors": "--actors"})
    message = str(info.value)
    assert "--level: segment.level: Input should be greater than or equal to 0 (got -1)" in message
    assert "--actors: segment.actors: " in message and "job.yaml: segment.batch_size: " in message
    with pytest.raises(ConfigError, match=r"--block: segment.block: 100 is not a multiple of output_tile \(512\)"):
        validate_section(SegmentSettings, {"block": 100}, "segment", "job.yaml", {"block": "--block"})


def test_integers_read_as_written_not_as_yaml_1_1_octal_or_sexagesimal(tmp_path):
    """PyYAML's YAML 1.1 reads 010 as 8 and 1:30 as 90: class codes [005, 010, 015] would become 5, 8, 13."""
    path = write(tmp_path, "run: {seed: 010}\ndata: {sources: [{uri: x}], classes: {classes: [\n  {name: resin, "
                           "codes: [000]}, {name: pyrite, codes: [005, 010]}, {name: galena, codes: [015]}]}}")
    config = load_config(path, MinsegConfig, overrides={"run.output_uri": "1:30"})
    assert config.run.seed == 10 and config.run.output_uri == "1:30"
    assert [c.codes for c in config.data.classes.classes] == [[0], [5, 10], [15]]


def test_set_reaches_list_entries_by_index_or_name(tmp_path, capsys):
    """``--set`` follows lists: by index as errors name keys (``members[1]``) or dotted (``members.1``), by the
    entry's name in a list of named entries; a key it cannot follow is an error naming it, not a new section."""
    from minseg.cli import main

    data = {"run": {"name": "x"},
            "training": {"defaults": {"model": "unet", "stages": [{"epochs": 4, "batch_size": 8}]},
                         "members": [{"name": "unet-a", "seed": 1}, {"name": "unet-b", "seed": 2}]},
            "evaluation": {"modes": ["pv", "soft"]}}
    before = copy.deepcopy(data)
    config = validate_config(data, MinsegConfig, overrides={
        "training.members.unet-b.seed": "7", "training.members[0].loss.name": "ce_focal",
        "training.defaults.stages.0.epochs": "2", "evaluation.modes[1]": "weighted_soft"})
    assert [m.seed for m in config.training.members] == [1, 7]
    assert [str(m.loss.name) for m in config.training.members] == ["ce_focal", "ce"]
    assert [m.stages[0].epochs for m in config.training.members] == [2, 2]
    assert [str(m) for m in config.evaluation.modes] == ["pv", "weighted_soft"]
    assert data == before  # the file's lists are not changed in place

    def refused(overrides):
        with pytest.raises(ConfigError) as caught:
            validate_config(data, MinsegConfig, overrides=overrides)
        return str(caught.value)

    assert "--set training.members[2].seed: training.members[2]: no entry 2: the list holds 2 (0 to 1)" in refused(
        {"training.members[2].seed": "3"})
    assert ("training.members[unet-c]: 'unet-c' is not an index (0, 1, ...) or the name of an entry of this list "
            "of 2; entries named: unet-a, unet-b") in refused({"training.members.unet-c.seed": "3"})
    assert "training.members[0].stages: no list here to take an entry of" in refused(
        {"training.members[0].stages[0].epochs": "3"})
    assert "cannot set a key inside 'run.name'" in refused({"run.name.x": "1"})
    # a list written null (as `config show` writes unset keys) is no list either; a section written null is one
    data["training"]["members"][0]["stages"] = None
    assert "training.members[0].stages: no list here to take an entry of" in refused(
        {"training.members[0].stages[0].epochs": "3"})
    data["training"]["members"][0]["stages"] = [{"epochs": 4, "batch_size": 8}]
    # a member named by a number or with dots: brackets make an index an index and a name a name
    data["training"]["members"] += [{"name": "0"}, {"name": "unet.v2"}]
    assert "'0' is both an index and the name of entry 2: write training.members[0]" in refused(
        {"training.members.0.seed": "3"})
    config = validate_config(data, MinsegConfig, overrides={"training.members[0].seed": "5",
                                                            "training.members[unet.v2].seed": "6"})
    assert [m.seed for m in config.training.members] == [5, 2, None, 6]
    assert "a name holding dots goes in brackets" in refused({"training.members.unet.v2.seed": "3"})
    # the nearest override is blamed: the entry's own, not the whole list set beside it
    assert "--set training.members[1].seed: Input should be a valid integer" in refused(
        {"training.members": yaml.safe_dump(data["training"]["members"]), "training.members[1].seed": "x"})
    data["training"]["members"] = before["training"]["members"]
    # the environment upper-cases names and cannot hold '-': MINSEG__...__UNET_B__ is unet-b (when only one fits)
    config = validate_config(data, MinsegConfig, environ={"MINSEG__TRAINING__MEMBERS__UNET_B__SEED": "9"})
    assert [m.seed for m in config.training.members] == [1, 9]
    twins = copy.deepcopy(data)
    twins["training"]["members"].append({"name": "unet_b"})
    config = validate_config(twins, MinsegConfig, environ={"MINSEG__TRAINING__MEMBERS__UNET_B__SEED": "9"})
    assert [m.seed for m in config.training.members] == [1, 2, 9]  # the exact name first
    twins["training"]["members"][2]["name"] = "UNET-B"
    with pytest.raises(ConfigError, match=r"environment MINSEG__TRAINING__MEMBERS__UNET_B__SEED: "
                                          r"training.members\[unet_b\]: 'unet_b' names several entries"):
        validate_config(twins, MinsegConfig, environ={"MINSEG__TRAINING__MEMBERS__UNET_B__SEED": "9"})
    # a bad value set inside a list blames the --set, not the file
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["config", "validate", str(path), "--set", "training.members.unet-b.seed=x"]) == 2
    assert "--set training.members.unet-b.seed: training.members[1].seed: Input should be a valid integer" in (
        capsys.readouterr().err)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: a second ``training:`` section (or a member's second ``model:``)
    replaced the first without a word. YAML requires unique keys; merge keys (``<<``) still merge."""
    path = tmp_path / "c.yaml"
    path.write_text("run: {name: x}\ntraining:\n  members:\n    - name: a\n      model: unet\n      model: res_unet\n")
    with pytest.raises(ConfigError, match=r"line 6, column 7: not valid YAML \(the key 'model' is given twice in one "
                                          r"mapping \(first on line 5\); keep one\)"):
        load_config(path, MinsegConfig)
    path.write_text("run: {name: x}\nrun: {name: y}\n")
    with pytest.raises(ConfigError, match="the key 'run' is given twice"):
        load_config(path, MinsegConfig)
    path.write_text("shared: &stage {epochs: 2}\nrun:\n  <<: {name: x}\n  seed: 3\n")
    with pytest.raises(ConfigError, match="shared: unknown key"):  # merged fine; the anchor's own key is unknown
        load_config(path, MinsegConfig)


def test_a_commands_defaults_fill_what_the_file_lacks_and_nothing_else():
    """``score --data``'s sources are defaults under the file: a data section with only ``bit_depth`` (or none)
    validates, and a file's own sources or values win over them."""
    defaults = {"data": {"sources": [{"uri": "/from/flag"}]}}
    config = validate_config({"data": {"bit_depth": 12}}, MinsegConfig, defaults=defaults)
    assert config.data.bit_depth == 12 and [s.uri for s in config.data.sources] == ["/from/flag"]
    own = validate_config({"data": {"sources": [{"uri": "/from/file"}]}}, MinsegConfig, defaults=defaults)
    assert [s.uri for s in own.data.sources] == ["/from/file"]
    assert [s.uri for s in validate_config({}, MinsegConfig, defaults=defaults).data.sources] == ["/from/flag"]
    overridden = validate_config({}, MinsegConfig, overrides={"data.bit_depth": "10"}, defaults=defaults)
    assert overridden.data.bit_depth == 10 and "bit_depth" in overridden.data.model_fields_set
    with pytest.raises(ConfigError, match="sources"):
        validate_config({"data": {"bit_depth": 12}}, MinsegConfig)


def test_config_validate_past_the_schema_in_every_section_and_never_a_traceback(tmp_path, capsys):
    """With a misspelt key elsewhere, prospect's members and the evaluation's rank key are still checked (as
    training's); YAML that refers to itself or nests endlessly, and a model option that is no finite number, are
    refused naming the file and key (they ended in a RecursionError or an OverflowError traceback)."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    config = yaml.safe_load(open("configs/prospect_synthetic.yaml"))
    config["run"]["nmae"] = 1
    config["prospect"]["grid"]["cel_m"] = 3
    config["prospect"]["training"]["members"][0]["model"] = "mfaff"
    config["data"] = {"sources": [{"uri": str(tmp_path)}], "classes": {"classes": [{"name": "ore", "codes": [1]}]}}
    config["evaluation"] = {"rank_key": "iou:gold"}
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    for says in ("run.nmae: unknown key", "prospect.grid.cel_m: unknown key",
                 "prospect.training.members[0].model: unknown model 'mfaff'",
                 "evaluation.rank_key: unknown class 'gold' in 'iou:gold'; classes: ore"):
        assert f"  {path}: {says}" in err, (says, err)
    for text, says in (("a: &a [*a]\n", "an alias refers to its own anchor"),
                       ("run: " + "[" * 900 + "]" * 900 + "\n", "nests deeper than 64 levels"),
                       ("training: {members: [{name: a, model: unet, stages: [{epochs: 1}], "
                        "model_options: {width: .inf}}]}\n", "training.members[0].model_options: width: inf is not "
                                                             "a finite number")):
        path.write_text(text)
        assert main(["config", "validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_true_and_false_stay_what_they_are_where_a_flag_is_meant(tmp_path):
    """Only a number refuses true / false: a flag, a ``bool | int`` union and ``Any`` take them; a model's number
    option refuses them by its annotation."""
    from typing import Any, Literal, Mapping, Sequence

    from minseg.config.base import bool_for_number
    from minseg.errors import InputError
    from minseg.models.registry import get_entry

    assert not any(bool_for_number(t, v) for t, v in ((bool, True), (bool | int, True), (Any, True), (str, True),
                                                        (Literal["a"], True), (list[bool], [True]), (str, "true")))
    assert all(bool_for_number(t, v) for t, v in ((float, True), (int | None, False), (list[int], [1, True]),
                                                    (tuple[int, float], (1, False)), (dict[str, float], {"a": True}),
                                                    (Literal[1, 2], True), (float | list[float], [True]),
                                                    (Sequence[int], [1, True]), (Mapping[str, float], {"a": True})))
    config = load_config(write(tmp_path, "evaluation: {learned_per_class: true}"), MinsegConfig)
    assert config.evaluation.learned_per_class is True  # a flag still reads true
    for option, value in (("width", True), ("context_bins", [True, 2])):  # a Sequence[int] option too
        with pytest.raises(InputError, match=f"model 'unet' option {option}: a number is needed, not true / false"):
            get_entry("unet").checked_options({option: value})


def test_job_problems_are_blamed_member_by_member_and_on_environment_variables(tmp_path, capsys, monkeypatch):
    """Past the schema, ``config validate`` blames each source for the members it brings a problem to: a --set
    that mends one member of a problem the file's defaults give every member is not blamed for the rest (it
    was, the line's members differing from the file's), and an environment variable is named, not the file."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "classes": {"classes": [
            {"name": "background", "codes": [0]}, {"name": "pyrite", "codes": [1]}]}},
        "training": {"defaults": {"model": "unet", "model_options": {"width": -1},
                                  "stages": [{"epochs": 1, "batch_size": 4}]},
                     "members": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}))
    width = "width must be a number above 0 (a share of the paper's channels, e.g. 0.25), got -1.0"
    assert main(["config", "validate", str(path), "--set", "training.members.a.model_options.width=0.5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == [f"  {path}: training.members[b, c]: {width}"]
    monkeypatch.setenv("MINSEG__EVALUATION__RANK_KEY", "iou:pyrt")
    assert main(["config", "validate", str(path), "--set", "training.members.c.model=unett"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[1:]
    assert lines[0] == f"  {path}: training.members[a, b]: {width}"
    assert lines[1].startswith("  --set training.members.c.model: training.members[c]: unknown model 'unett'")
    assert lines[2:] == ["  environment MINSEG__EVALUATION__RANK_KEY: evaluation.rank_key: unknown class 'pyrt' in "
                         "'iou:pyrt'; classes: background, pyrite"]


def test_a_refused_default_or_data_key_leaves_the_rest_checked(tmp_path, capsys):
    """A bad ``training.defaults`` value refuses every member: their models were then never looked at; a misspelt
    data key dropped the class list the members' class weights are checked against. Each refused value is left out
    and the rest checked, but a refused class list is not taken for a missing one."""
    from minseg.cli import main

    path = tmp_path / "c.yaml"
    classes = {"classes": [{"name": "background", "codes": [0]}, {"name": "pyrite", "codes": [1]}]}
    config = {"run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "classes": classes, "tilling": 1},
              "training": {"defaults": {"model": "unet", "optimizer": {"lr": -1},
                                        "stages": [{"epochs": 1, "batch_size": 4}]},
                           "members": [{"name": "a", "model": "unett"},
                                       {"name": "b", "loss": {"name": "ce", "class_weights": [1, 2, 3]}}]}}
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[1:]
    assert lines[:2] == [f"  {path}: data.tilling: unknown key (check spelling; see docs/configuration.md)",
                         f"  {path}: training.defaults.optimizer.lr: Input should be greater than 0 (got -1)"]
    assert lines[2].startswith(f"  {path}: training.members[a]: unknown model 'unett'")
    lines_b = f"  {path}: training.members[b]: class_weights must list one value per class (2), got 3 value(s)"
    assert lines[3:] == [lines_b]
    # a union's value refused: its loc names a branch (cache.bool), not a key: the rest of data still checked
    path.write_text(yaml.safe_dump({
        "run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}], "classes": classes, "cache": "sometimes"},
        "training": {"defaults": {"model": "unet", "stages": [{"epochs": 1, "batch_size": 4}]},
                     "members": [config["training"]["members"][1]]}}))
    assert main(["config", "validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[1:]
    assert lines[0].startswith(f"  {path}: data.cache: Input should be a valid boolean") and lines[1:] == [lines_b]
    config["data"]["classes"] = {"classes": [{"name": "background", "codes": "zero"}]}
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.classes.classes[0].codes" in err and "data.classes is required" not in err, err


def test_a_refused_synth_section_is_still_the_demos_classes(capsys, monkeypatch):
    """The demo's config lists no classes: its synth section gives them. Refused (a bad count, null from a
    variable), it was left out of the checks past the schema, which then said "data.classes is required"."""
    from minseg.cli import main

    demo = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert main(["config", "validate", demo, "--set", "synth.sections.count=-3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == [
        "  --set synth.sections.count: Input should be greater than 0 (got -3)"]
    monkeypatch.setenv("MINSEG__SYNTH", "null")
    assert main(["config", "validate", demo, "--set", "training.members.halfunet-a.seed=4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  environment MINSEG__SYNTH: synth: "), lines


def test_every_uri_key_refuses_what_no_job_can_open(tmp_path):
    """`data.sources[0].uri: ''`, an ftp:// URI, `s3://` without a bucket: `config validate` called them valid and
    the job refused them later, some without naming the key. Every URI key is checked when the config is read."""
    base = {"run": {"name": "x"}, "data": {"sources": [{"uri": str(tmp_path)}]}}
    cases = {("data", "sources", 0, "uri"): ("", "empty path or URI", "data.sources[0].uri"),
             ("run", "output_uri"): ("ftp://host/out", "unsupported scheme 'ftp'", "run.output_uri"),
             ("segment", "slides"): (["s3://"], "has no bucket", "segment.slides[0]"),
             ("evaluation", "run_uri"): ("s3://key:secret@bucket/run", "must not carry credentials",
                                         "evaluation.run_uri"),
             ("training", "members"): ([{"name": "a", "model": "unet", "init": {"uri": "  "}}], "a blank path",
                                       "training.members[0].init.uri")}
    for path, (value, said, key) in cases.items():
        document = json.loads(json.dumps(base))
        target = document
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
        target[path[-1]] = value
        with pytest.raises(ConfigError, match=re.escape(said)) as caught:
            validate_config(document, MinsegConfig)
        assert f"{key}: " in str(caught.value) and "secret" not in str(caught.value), str(caught.value)


def test_every_seed_is_0_to_2_to_the_32_minus_1(tmp_path, capsys):
    """A negative or huge seed was "valid" and failed a minute into training ("expected non-negative integer" from
    a worker, nothing naming the seed): each seed key is refused when read, as is ``synth --seed``."""
    from minseg.cli import main

    base = {"run": {"seed": 0}, "data": {"sources": [{"uri": str(tmp_path)}], "split": {"seed": 1}},
            "synth": {"seed": 2},
            "training": {"members": [{"name": "a", "model": "unet", "seed": 3, "stages": [{"epochs": 1}]}]}}
    assert MinsegConfig.model_validate(base).training.members[0].seed == 3
    edge = copy.deepcopy(base)
    edge["run"]["seed"] = 2**32 - 1
    assert MinsegConfig.model_validate(edge).run.seed == 2**32 - 1
    for where, value in (("run.seed", -5), ("data.split.seed", -1), ("synth.seed", 2**32),
                         ("training.members.0.seed", 10**26)):
        document = copy.deepcopy(base)
        keys = where.split(".")
        target = document
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value
        path = write(tmp_path, yaml.safe_dump(document))
        capsys.readouterr()
        assert main(["config", "validate", str(path)]) == 2, where
        err = capsys.readouterr().err
        assert ("greater than or equal to 0" if value < 0 else "less than or equal to 4294967295") in err, (where, err)
    with pytest.raises(SystemExit) as stopped:
        main(["synth", "--seed", "-3", "--out", str(tmp_path / "s")])
    assert stopped.value.code == 2 and "--seed: -3 is not a seed (0 to 4294967295)" in capsys.readouterr().err


def test_an_evaluation_lists_each_mode_and_member_once():
    """``modes: [pv, pv, soft]`` built RUEL-k-PV twice; evaluate then failed after all its predictions."""
    for key, value in (("modes", ["pv", "pv", "soft"]), ("members", ["a", "b", "a"]), ("voters", ["a", "a"])):
        with pytest.raises(ConfigError, match=rf"evaluation.{key}: lists \w+ more than once"):
            validate_config({"evaluation": {key: value}}, MinsegConfig)
