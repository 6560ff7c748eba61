import json
import subprocess
import sys
from pathlib import Path

import pytest

from minseg.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minseg", *args], capture_output=True, text=True, timeout=600)


def test_output_into_a_closed_pipe_ends_quietly():
    """``minseg models | head`` printed a BrokenPipeError traceback. The reader here closes the pipe before
    anything is written (as head does after its lines): exit 141, as a process SIGPIPE ended, and nothing on
    stderr."""
    for args in (["models"], ["models", "--json"], ["--help"]):
        process = subprocess.Popen([sys.executable, "-m", "minseg", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(timeout=120) == (0 if args == ["--help"] else 141), (args, err)  # --help: argparse exits 0
        assert "Traceback" not in err and "BrokenPipeError" not in err, (args, err)


def test_a_broken_pipe_that_is_not_stdout_stays_an_error(monkeypatch):
    """Only a closed stdout ends quietly: a socket or another process's pipe breaking inside a command is raised."""
    import minseg.cli as cli

    def broken(args):
        raise BrokenPipeError("a worker's socket")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(BrokenPipeError, match="a worker's socket"):
        main(["info"])


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


def test_config_validate_says_when_a_file_sets_nothing(tmp_path, capsys):
    """An empty file, or one of comments or `null`, was "valid" like any other: it is, but nothing in it is the
    user's (a file saved empty, the wrong file)."""
    for text in ("", "# only a comment\n", "null\n"):
        (tmp_path / "c.yaml").write_text(text)
        assert main(["config", "validate", str(tmp_path / "c.yaml")]) == 0
        assert capsys.readouterr().out.strip().endswith("valid (it sets nothing: every value is a default)"), text
    (tmp_path / "c.yaml").write_text("run: {seed: 1}\n")
    assert main(["config", "validate", str(tmp_path / "c.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith(": valid")


def test_config_show_fills_defaults(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("run: {name: x}\n")
    assert main(["config", "show", str(good), "--set", "run.seed=4"]) == 0
    out = capsys.readouterr().out
    assert "seed: 4" in out and "max_attempts: 8" in out
    # what it prints is a config: its unset sections (null) take --set keys
    shown = tmp_path / "shown.yaml"
    shown.write_text(out)
    assert "score: null" in out
    assert main(["config", "show", str(shown), "--set", "score.cpus_per_actor=0.25"]) == 0
    assert "cpus_per_actor: 0.25" in capsys.readouterr().out
    # a bare comma (the docs' decimal: ','), typed unquoted, printed PyYAML's five-line parser dump
    assert main(["config", "show", str(good), "--set", "prospect.samples.decimal=,"]) == 2
    err = capsys.readouterr().err
    assert "prospect.samples.decimal: value ',' is not valid YAML (expected the node content, but found ',');" in err
    assert "quote a text that starts with punctuation: prospect.samples.decimal=\"','\"" in err
    assert len(err.strip().splitlines()) == 2, err  # "invalid configuration" and the problem
    assert main(["config", "show", str(good), "--set", "run.seed=[1, 2"]) == 2  # no text to quote: no such hint
    err = capsys.readouterr().err
    assert "run.seed: value '[1, 2' is not valid YAML (" in err and "quote" not in err
    assert main(["config", "show", str(good), "--set", "run..seed=1"]) == 2  # was read as run.seed
    assert "'run..seed' has an empty part between dots" in capsys.readouterr().err


def test_synth_survey_and_storage_commands(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["synth", "survey", "--out", str(out), "--set", "synth.survey.n_samples=50"]) == 0
    assert (out / "survey" / "samples.csv").exists()
    assert not (out / "sections").exists()
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert manifest["config"]["synth"]["survey"]["n_samples"] == 50
    printed = capsys.readouterr().out.splitlines()  # a line per product, not the manifest's JSON
    assert printed[0].startswith("synthesised in ") and printed[0].endswith("(all of it: synth_manifest.json)")
    assert printed[1].startswith("  survey: 50 samples, ") and "(EPSG:3067)" in printed[1] and len(printed) == 2
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
    convnext = next(r for r in rows if r["name"] == "convnext_eca")  # numbers and booleans as JSON's own (were text)
    assert convnext["defaults"]["eca"] is True and convnext["defaults"]["drop_path_rate"] == 0.1
    for bad in ("0", "-3", "two"):  # a usage error (exit 2), not a model-building traceback
        with pytest.raises(SystemExit) as stopped:
            main(["models", "--num-classes", bad])
        assert stopped.value.code == 2
    assert "--num-classes: 0 is not at least 1" in capsys.readouterr().err


def _storage(capsys, *argv):
    """(exit status, stdout, stderr) of ``minseg storage ARGV``."""
    status = main(["storage", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_storage_cat_streams_a_file_larger_than_the_memory_it_may_use(tmp_path):
    """A break-it pass: ``storage cat`` read the whole file into memory (a MemoryError traceback on a slide); it
    streams now, here 1.5 GiB (sparse: no disk used) under a 1 GiB address-space limit. Its bytes arrive whole; an
    image's bytes are not printed to a terminal."""
    import hashlib
    import os
    import pty

    big = tmp_path / "big.bin"
    with open(big, "wb") as stream:
        stream.truncate(3 << 29)
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
               "from minseg.cli import main; sys.exit(main(['storage', 'cat', sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", limited, str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    several = tmp_path / "several.bin"  # more than one chunk, not sparse
    several.write_bytes(os.urandom(20 << 20))
    out = subprocess.run([sys.executable, "-m", "minseg", "storage", "cat", str(several)], capture_output=True,
                         timeout=300).stdout
    assert hashlib.sha256(out).digest() == hashlib.sha256(several.read_bytes()).digest()
    leader, follower = pty.openpty()  # a terminal as standard output
    try:
        shown = subprocess.run([sys.executable, "-m", "minseg", "storage", "cat", str(several)], stdout=follower,
                               stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    assert shown.returncode == 2 and b"a binary file, not printed to a terminal" in shown.stderr


def test_storage_globs_folders_and_missing_paths_locally(tmp_path, capsys):
    """ls and rm expand a glob (quoted: minseg, not the shell); cat and cp refuse one; rm of nothing is an error;
    cp into a folder keeps the name; a folder is never copied or deleted whole; a file in the way is named."""
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    for name in ("dir/a.txt", "dir/b.txt", "dir/sub/c.txt", "file.txt", "br[1].txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "existing").mkdir()
    t = str(tmp_path)

    status, out, _ = _storage(capsys, "ls", f"{t}/dir/*.txt")
    assert status == 0 and out.split()[1::2] == [f"{t}/dir/a.txt", f"{t}/dir/b.txt"]
    assert _storage(capsys, "cat", f"{t}/br[1].txt")[1] == "br[1].txt"  # a name that exists is no glob
    for action in ("cat", "cp"):
        status, _, err = _storage(capsys, action, f"{t}/dir/*.txt", *([f"{t}/existing"] if action == "cp" else []))
        assert status == 2 and f"dir/*.txt: storage {action} takes one file, not a glob" in err
    status, _, err = _storage(capsys, "rm", f"{t}/nothere.txt")
    assert status == 2 and "nothere.txt: no such file or folder" in err
    status, _, err = _storage(capsys, "rm", f"{t}/dir/*.nope")
    assert status == 2 and "dir/*.nope: no file matches this glob" in err

    assert _storage(capsys, "cp", f"{t}/file.txt", f"{t}/newdir/")[0] == 0
    assert (tmp_path / "newdir" / "file.txt").read_text() == "file.txt"
    assert _storage(capsys, "cp", f"{t}/file.txt", f"{t}/existing")[0] == 0
    assert (tmp_path / "existing" / "file.txt").read_text() == "file.txt"
    for argv, message in ((["cp", f"{t}/dir", f"{t}/dest"], "dir: is a folder; storage cp copies one file"),
                          (["cp", f"{t}/dir", f"{t}/file.txt"], "dir: is a folder; storage cp copies one file"),
                          (["rm", f"{t}/dir"], f"dir: is a folder; storage rm deletes files: give a glob of those to "
                                               f"delete, e.g. '{t}/dir/**'"),
                          (["cp", f"{t}/file.txt", f"{t}/file.txt/x"], "file.txt/x: lies under"),
                          (["cat", f"{t}/dir"], "dir: is a directory, not a file"),
                          # a bucket left out, a slash short: was written to a local folder 's3:' as "copied"
                          (["cp", f"{t}/file.txt", "s3://"], "'s3://' has no bucket"),
                          (["cp", f"{t}/file.txt", "s3:/bucket/x"], "'s3:/bucket/x': not an s3:// or file:// URI"),
                          (["cp", f"{t}/file.txt", "s3:bucket"], "'s3:bucket': not an s3:// or file:// URI")):
        status, _, err = _storage(capsys, *argv)
        assert status == 2 and message in err, (argv, err)
    assert not (tmp_path / "dest").exists() and (tmp_path / "file.txt").read_text() == "file.txt"
    assert not list(Path.cwd().glob("s3:*"))

    status, out, _ = _storage(capsys, "rm", f"{t}/dir/*.txt")
    assert status == 0 and out.split() == ["deleted", f"{t}/dir/a.txt", "deleted", f"{t}/dir/b.txt"]
    assert sorted(p.name for p in (tmp_path / "dir").rglob("*")) == ["c.txt", "sub"]
    with pytest.raises(SystemExit) as stopped:  # an unquoted glob the shell expanded: rm would take only the first
        main(["storage", "rm", f"{t}/file.txt", f"{t}/br[1].txt"])
    assert stopped.value.code == 2 and "storage rm takes one path or glob" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # cat reads one file: no glob to suggest
        main(["storage", "cat", f"{t}/file.txt", f"{t}/br[1].txt"])
    assert stopped.value.code == 2 and "storage cat takes one path; " in capsys.readouterr().err
    assert (tmp_path / "file.txt").exists()


def test_storage_globs_say_the_hidden_files_they_skip(tmp_path, s3, monkeypatch, capsys):
    """``rm 'out/**'`` left `.minseg-redo/` and dot files in place with exit 0, while the docs said "every file":
    '*' and '**' skip hidden names as a shell does, and now say how many they skipped and how to match them; a
    link to a folder is said to be one before its glob is suggested."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    storage = s3.storage()
    for root in (str(tmp_path / "out"), s3.uri("out")):
        for name in ("a.txt", ".dot", "sub/.hid/x", "sub/b"):
            storage.write_bytes(f"{root}/{name}", b"x")
        status, out, err = _storage(capsys, "rm", f"{root}/**")
        assert status == 0 and out.split()[1::2] == [f"{root}/a.txt", f"{root}/sub/b"], root
        assert (f"note: 2 hidden file(s) not matched (e.g. {root}/.dot): '*' and '**' skip names starting with '.', "
                "and what hidden folders hold, as in a shell; a pattern part starting with '.' matches them") in err
        assert _storage(capsys, "rm", f"{root}/**/.*")[1].split()[1::2] == [f"{root}/.dot"]
        status, _, err = _storage(capsys, "rm", f"{root}/**")  # only hidden ones left: none matches, said why
        assert status == 2 and "no file matches this glob; 1 hidden file(s)" in err
        assert _storage(capsys, "rm", f"{root}/**/.*/**")[1].split()[1::2] == [f"{root}/sub/.hid/x"]
    (tmp_path / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    status, _, err = _storage(capsys, "rm", tmp_path / "link")
    assert status == 2 and f"({tmp_path / 'link'} is a link to {tmp_path / 'out'}: the files are that folder's)" in err


def test_storage_globs_folders_and_missing_objects_on_s3(s3, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    storage = s3.storage()
    for key in ("dir/a.txt", "dir/b.txt", "dir/sub/c.txt", "file.txt", "run[1]/x.txt"):
        storage.write_bytes(s3.uri(key), key.encode())
    # a prefix whose name holds glob characters is that prefix (HEAD finds no object there), not a glob
    status, out, _ = _storage(capsys, "ls", s3.uri("run[1]/"))
    assert status == 0 and out.split()[1::2] == [s3.uri("run[1]/x.txt")]

    status, out, _ = _storage(capsys, "ls", s3.uri("dir/*.txt"))
    assert status == 0 and out.split()[1::2] == [s3.uri("dir/a.txt"), s3.uri("dir/b.txt")]
    status, _, err = _storage(capsys, "cat", s3.uri("dir/*.txt"))
    assert status == 2 and "storage cat takes one file, not a glob" in err
    status, _, err = _storage(capsys, "rm", s3.uri("nothere.txt"))
    assert status == 2 and "nothere.txt: no such object" in err
    status, _, err = _storage(capsys, "rm", s3.uri("dir/*.nope"))
    assert status == 2 and "no file matches this glob" in err
    for argv, message in ((["cp", s3.uri("dir"), s3.uri("dest")], "dir: is a folder; storage cp copies one file"),
                          (["rm", s3.uri("dir")], "dir: is a folder; storage rm deletes files"),
                          (["cat", s3.uri("dir")], "dir: is a folder; storage cat reads one file")):
        status, _, err = _storage(capsys, *argv)
        assert status == 2 and message in err, (argv, err)

    assert _storage(capsys, "cp", s3.uri("file.txt"), s3.uri("newdir/"))[0] == 0  # S3 to S3, into a folder
    assert _storage(capsys, "cp", s3.uri("file.txt"), s3.uri("dir"))[0] == 0  # an existing prefix is a folder
    assert storage.read_bytes(s3.uri("newdir/file.txt")) == storage.read_bytes(s3.uri("dir/file.txt")) == b"file.txt"
    storage.client.create_bucket(Bucket=f"{s3.bucket}-empty")  # the bucket itself is a folder, even empty
    assert _storage(capsys, "cp", s3.uri("file.txt"), f"s3://{s3.bucket}-empty")[0] == 0
    assert storage.read_bytes(f"s3://{s3.bucket}-empty/file.txt") == b"file.txt"
    status, out, _ = _storage(capsys, "rm", s3.uri("dir/*.txt"))
    assert status == 0 and out.split()[1::2] == [s3.uri("dir/a.txt"), s3.uri("dir/b.txt"), s3.uri("dir/file.txt")]
    assert [info.uri for info in storage.list(s3.uri("dir/"))] == [s3.uri("dir/sub/c.txt")]
    for folder in (f"s3://{s3.bucket}/", f"s3://{s3.bucket}", s3.uri("dir/")):  # botocore's "Invalid length for Key"
        status, _, err = _storage(capsys, "cat", folder)
        assert status == 2 and "is a folder; storage cat reads one file" in err, (folder, err)
    # botocore raises as a listing is paged, outside a single call: an unreachable endpoint was a traceback
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    status, _, err = _storage(capsys, "ls", s3.uri("dir/"))
    assert status == 2 and "list_objects_v2 failed against endpoint http://127.0.0.1:1" in err
    assert "Traceback" not in err


def test_synth_without_a_target_makes_everything(tmp_path, capsys):
    """``minseg synth --out X`` was refused by argparse (Python 3.11: "invalid choice: ['all']"). Its targets parse
    (none: all); a named target makes only that, for real."""
    import json

    from minseg.cli import build_parser

    for targets in ([], ["all"], ["slide", "survey"]):
        assert build_parser().parse_args(["synth", *targets, "--out", str(tmp_path)]).what == targets
    out = tmp_path / "made"
    assert main(["synth", "slide", "--out", str(out), "--set", "synth.slide={height: 64, width: 80, tile: 16}"]) == 0
    assert set(json.loads((out / "synth_manifest.json").read_text())["outputs"]) == {"slide"}
    assert [line.split(":")[0].strip() for line in capsys.readouterr().out.splitlines()[1:]] == ["slide"]
    with pytest.raises(SystemExit) as stopped:
        main(["synth", "slides", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "invalid choice: 'slides' (choose from all, sections, slide, survey)" in capsys.readouterr().err


def test_a_minseg_error_in_a_ray_task_is_its_message_and_exit_code(ray_session, tmp_path, capsys):
    """A storage error inside a Ray task (here: sections written where a file stands in for their folder) reached
    the CLI as ``RayTaskError(UserCodeException)``: a traceback, exit 1. Unwrapped at the CLI: the message, exit 2."""
    (tmp_path / "made" / "sections").mkdir(parents=True)
    (tmp_path / "made" / "sections" / "images").write_text("a file, not a folder")
    (tmp_path / "made" / "synth_manifest.json").write_text('{"products": ["sections"]}')  # an earlier synth's
    assert main(["synth", "sections", "--out", str(tmp_path / "made"),
                 "--set", "synth.sections={count: 2, height: 64, width: 64}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("minseg: error: ") and "sections/images/section_0000" in err and "lies under" in err, err


def test_log_levels_in_any_case_and_unknown_ones_are_usage_errors(tmp_path, monkeypatch, capsys):
    """``debug`` was ``ValueError: Unknown level: 'debug'`` with a traceback, from the flag and the variable."""
    import logging

    from minseg.logs import verbose

    for level, expected in (("debug", logging.DEBUG), ("Warning", logging.WARNING), ("warn", logging.WARNING),
                            ("INFO", logging.INFO)):
        monkeypatch.setenv("MINSEG_LOG_LEVEL", level)
        assert main(["storage", "ls", str(tmp_path)]) == 0
        assert logging.getLogger("minseg").level == expected
        monkeypatch.delenv("MINSEG_LOG_LEVEL")
        monkeypatch.setenv("MINSEG_VERBOSE", "0")
        assert main(["--log-level", level, "storage", "ls", str(tmp_path)]) == 0
        assert logging.getLogger("minseg").level == expected
        # debug from the flag shows Ray's own output too, as the variable does (it did not)
        assert verbose() is (expected == logging.DEBUG)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["--log-level", "loud", "storage", "ls", str(tmp_path)])
    assert stopped.value.code == 2
    assert ("argument --log-level: 'loud' is not a log level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            in capsys.readouterr().err)
    for variable, value, message in (("MINSEG_LOG_LEVEL", "loud", "'loud' is not a log level; use one of DEBUG"),
                                     ("MINSEG_LOG_FORMAT", "xml", "'xml' is not a log format; use text or json")):
        monkeypatch.setenv(variable, value)
        assert main(["storage", "ls", str(tmp_path)]) == 2
        assert f"minseg: error: {variable}: {message}" in capsys.readouterr().err
        monkeypatch.delenv(variable)
    result = run_cli("--log-level", "DeBuG", "info")  # the command as users run it: no traceback
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_main_puts_the_sigterm_handler_back(tmp_path):
    """``main`` makes SIGTERM end the command as Ctrl-C does, for its run only: a process running commands
    in-process (a notebook, a test) keeps its own handler afterwards."""
    import signal

    def own(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, own)
    try:
        assert main(["storage", "ls", str(tmp_path)]) == 0
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, before)
