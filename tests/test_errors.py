"""User mistakes end as one message and exit 2 (input errors) through every command, never a traceback.

Each case is a mistake a user makes on the command line or in a config, caught before any
Ray work starts; ``main`` returning 2 (instead of raising) is the proof that the error
derives from ``minseg.errors.InputError`` and the CLI handles it.
"""

import json

import pytest

from minseg.cli import main
from minseg.errors import InputError, MinsegError, RunError

# what an evaluation.json holds besides its candidates (minseg select refuses a record without them)
# (members a and b evaluated: a candidate naming another is refused as an edited record)
RECORD = {"run": "r", "rank_key": "miou", "members": {"a": {}, "b": {}}, "rank_metrics": {}, "classes": {},
          "tiling": {}, "tta": "none", "normalization": {}}


def write(path, text):
    path.write_text(text)
    return str(path)


TRAINING = """
run: {{name: r, output_uri: {out}}}
data: {{sources: [{{uri: {out}/nowhere}}], classes: {{classes: [{{name: a, codes: [0]}}, {{name: b, codes: [1]}}]}}}}
training:
  members:
    - {{name: one, model: unet, stages: [{{epochs: 1}}]}}
    - {{name: two, model: convnext_eca, stages: [{{epochs: 1}}]}}
"""


@pytest.mark.parametrize("case", ["no_data", "unknown_member", "mixed_tasks", "existing_run", "no_members_json",
                                  "unknown_candidate", "unknown_rank_key", "candidate_and_key"])
def test_input_errors_exit_2_with_one_message(case, tmp_path, capsys):
    out = tmp_path / "out"
    config = write(tmp_path / "c.yaml", TRAINING.format(out=out))
    if case == "no_data":
        args, expected = ["train", "-c", write(tmp_path / "e.yaml", "run: {name: x}\n")], \
            "needs the 'data' and 'training' config sections"
    elif case == "unknown_member":
        args, expected = ["train", "-c", config, "--members", "one,three"], "unknown member(s) three"
    elif case == "mixed_tasks":
        args, expected = ["train", "-c", config], "must share a task"
    elif case == "existing_run":
        (out / "r" / "members" / "one" / "checkpoints").mkdir(parents=True)
        (out / "r" / "members" / "one" / "checkpoints" / "last.json").write_text('{"dir": "epoch-0001"}')
        args, expected = ["train", "-c", config, "--members", "one"], "pass --resume"
    elif case == "no_members_json":
        args, expected = ["evaluate", "-c", config], "no members.json"
    elif case == "unknown_candidate":
        folder = tmp_path / "evaluation"
        folder.mkdir()
        (folder / "evaluation.json").write_text(json.dumps({**RECORD, "candidates": [
            {"key": "RUEL-2-WV", "members": ["a", "b"], "mode": "wv", "weights": [2, 1]}]}))
        args, expected = ["select", str(folder), "--candidate", "RUEL-9-PV"], "no candidate 'RUEL-9-PV'"
    elif case == "candidate_and_key":
        args, expected = ["select", str(tmp_path), "--candidate", "RUEL-2-WV", "--key", "miou"], "give one or the other"
    else:  # a rank key naming a class the candidates do not have
        folder = tmp_path / "evaluation"
        folder.mkdir()
        metrics = {"classes": ["a", "b"], "iou": [0.5, 0.6], "miou": 0.55}
        (folder / "evaluation.json").write_text(json.dumps({**RECORD, "candidates": [
            {"key": "member:a", "members": ["a"], "mode": None, "weights": [1], "metrics": metrics, "tpi": 0.1}]}))
        args, expected = ["select", str(folder), "--key", "iou:quartz"], "unknown class 'quartz'"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("minseg: error: ") and "Traceback" not in err


def test_the_hierarchy():
    from minseg.config import ConfigError
    from minseg.io.slides import SlideError
    from minseg.io.storage import ObjectNotFoundError, StorageError

    assert issubclass(ConfigError, InputError) and issubclass(SlideError, InputError)
    assert issubclass(InputError, ValueError) and issubclass(RunError, RuntimeError)
    assert issubclass(ObjectNotFoundError, StorageError) and issubclass(ObjectNotFoundError, FileNotFoundError)
    assert StorageError.exit_code == InputError.exit_code == 2 and RunError.exit_code == 1
    assert all(issubclass(e, MinsegError) for e in (InputError, RunError, StorageError))


def test_validating_a_config_loads_neither_torch_nor_ray(tmp_path):
    """The CLI's error handling and config validation stay light (no job module imported to catch its errors); a
    config with training members loads torch to build them on the meta device, never Ray."""
    import subprocess
    import sys

    code = ("import sys; from minseg.cli import main; code = main(['config', 'validate', %r]); "
            "print(code, 'torch' in sys.modules, 'ray' in sys.modules)")
    plain = write(tmp_path / "c.yaml", "run: {name: x}\n")
    trained = write(tmp_path / "t.yaml", "run: {name: x}\ntraining:\n  members:\n    - {name: a, model: unet, "
                                         "model_options: {width: 0.25}, stages: [{epochs: 1}]}\n")
    for config, expected in ((plain, ["0", "False", "False"]), (trained, ["0", "True", "False"])):
        result = subprocess.run([sys.executable, "-c", code % config], capture_output=True, text=True, timeout=120)
        assert result.stdout.split()[-3:] == expected, result.stderr


def test_listing_a_path_that_does_not_exist_is_an_error(tmp_path, capsys):
    assert main(["storage", "ls", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["storage", "ls", str(tmp_path / "empty")]) == 0  # an empty folder is just empty


@pytest.mark.parametrize("argv,torch_expected", [(["--help"], False), (["storage", "ls", "."], False),
                                                 (["models"], True)])
def test_light_commands_do_not_start_heavy_imports(argv, torch_expected):
    """`minseg --help`, `storage` and `models` answer without loading Ray (and, but for models, torch)."""
    import subprocess
    import sys

    code = ("import sys\nfrom minseg.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'ray' in sys.modules)" % (argv,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split()[-2:] == [str(torch_expected), "False"], result.stderr
