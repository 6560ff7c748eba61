"""The ``minseg`` command."""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import shutil
import sys
from pathlib import Path

from minseg import __version__

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _load(args, defaults: dict | None = None) -> "MinsegConfig":  # noqa: F821
    """The config (``--config``, else the defaults) with ``--set`` on top; ``defaults``: values the command's
    own flags supply where the config has none (``validate_config``)."""
    from minseg.config import MinsegConfig, load_config, parse_set_options, validate_config

    overrides = parse_set_options(getattr(args, "set", None))
    if getattr(args, "config", None):
        return load_config(args.config, MinsegConfig, overrides=overrides, defaults=defaults)
    return validate_config({}, MinsegConfig, source="defaults", overrides=overrides, defaults=defaults)


def _add_config_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", "-c", required=required, type=_text, help="YAML config (path or s3:// URI)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set run.seed=3"
    )


def _text(text: str) -> str:
    """argparse type of a path, URI or name: not empty (an empty --out would quietly mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a path, URI or name")
    return text


def _at_least_one(text: str) -> int:
    """argparse type of a count: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _seed(text: str) -> int:
    """argparse type of a seed: ``config.base.Seed``'s range, 0 to ``SEED_MAX``."""
    from minseg.config.base import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not a seed (0 to {SEED_MAX})")
    return value


def _one_of(*choices: str):
    """argparse type of a '*' positional's entries: one of ``choices``."""
    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return text

    return check


def _log_level(text: str) -> str:
    """``--log-level``: a level name in any case."""
    from minseg.errors import InputError
    from minseg.logs import parse_log_level

    try:
        return parse_log_level(text, "--log-level")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--log-level: ")) from None


def _file_name(text: str) -> str:
    """argparse type of a name that becomes part of a file name (``select --name``): any text (``best by f1``)
    but a folder (``a/b`` or ``../x`` would write elsewhere), a hidden name or control characters."""
    from minseg.config.base import MAX_NAME_LENGTH

    if not text.strip() or "/" in text or "\\" in text or text.startswith(".") or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain name (no '/' or '\\', not starting with '.')")
    if len(text.encode()) > MAX_NAME_LENGTH:  # bytes: a file name's limit is 255 of them
        raise argparse.ArgumentTypeError(f"a name of at most {MAX_NAME_LENGTH} bytes, got {len(text.encode())}")
    return text


def _class_names(text: str) -> list[str]:
    """``--classes``: names by class id, each given and distinct (an empty entry would shift every later id)."""
    from minseg.data.config import class_list_problem

    names = [name.strip() for name in text.split(",")]
    problem = class_list_problem(names, any_case=True)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return names


def _member_names(text: str) -> list[str]:
    """``--members``: comma-separated member names, each given once."""
    names = [name.strip() for name in text.split(",")]
    for position, name in enumerate(names, 1):
        if not name:
            raise argparse.ArgumentTypeError(f"entry {position} of {text!r} is empty")
        if names.index(name) + 1 != position:
            raise argparse.ArgumentTypeError(f"{name!r} is given twice in {text!r} (entries "
                                             f"{names.index(name) + 1} and {position})")
    return names


def _section(model, current: dict, updates: dict, flags: dict[str, str], section: str, args,
             source: str | None = None):
    """``model`` (a config section) from the config's values with the command line's ``updates`` (None: not
    given) on top; a value that does not validate is a ConfigError naming its flag (``flags``: field -> flag)
    or, for ``current``'s own values, ``source`` (default: the config)."""
    from minseg.config import validate_section

    given = {key: value for key, value in updates.items() if value is not None}
    sources = {key: flags[key] for key in given if key in flags}
    return validate_section(model, {**current, **given}, section,
                            source or getattr(args, "config", None) or "command line", sources)


def _check_output(uri: str | None, source: str, command: str | None = None, config=None) -> None:
    """The output folder: not a file, not in a staging folder, and (``command`` given) not another command's outputs,
    read with ``config.storage`` (InputError naming ``source``)."""
    from minseg.io.storage import Storage, refuse_file_as_folder, refuse_other_command_outputs, refuse_staging_output

    refuse_file_as_folder(uri, source)
    refuse_staging_output(uri, source)
    if command is not None:
        refuse_other_command_outputs(uri, command, source, Storage(config.storage))


def cmd_demo(args) -> int:
    from minseg.demo import run_demo

    if not args.config and DEFAULT_DEMO_CONFIG.exists():
        args.config = str(DEFAULT_DEMO_CONFIG)
    config = _load(args)
    if args.out:
        config.run.output_uri = args.out
    source = "--out" if args.out else "run.output_uri"
    # the synthetic data at the top, the demo's training run in it (run.name)
    _check_output(config.run.output_uri, source, "demo", config)
    _check_output(config.run.uri, source, "train", config)
    run_demo(config, fresh=args.fresh)
    return 0


def cmd_synth(args) -> int:
    from minseg.config import SectionsSynth, SlideSynth, SurveySynth
    from minseg.demo import run_synth

    config = _load(args)
    wanted = set(args.what or ["all"])
    if "all" not in wanted:
        synth = config.synth
        synth.sections = (synth.sections or SectionsSynth()) if "sections" in wanted else None
        synth.slide = (synth.slide or SlideSynth()) if "slide" in wanted else None
        synth.survey = (synth.survey or SurveySynth()) if "survey" in wanted else None
    elif config.synth.slide is None:
        config.synth.slide = SlideSynth()
    if args.seed is not None:
        config.synth.seed = args.seed
    _check_output(args.out or config.run.output_uri, "--out" if args.out else "run.output_uri", "synth", config)
    result = run_synth(config, args.out)
    print(_synth_summary(result))
    return 0


def _synth_summary(result) -> str:
    """What ``minseg synth`` made, a line per product (``synth_manifest.json`` holds it all)."""
    lines = [f"synthesised in {result.seconds:.1f} s -> {result.output} (all of it: synth_manifest.json)"]
    sections, slide, survey = (result.outputs.get(k) for k in ("sections", "slide", "survey"))
    if sections:
        shares = {name: c["pixel_share"] for name, c in sections["classes"].items()}
        rarest = min(shares, key=shares.get)
        lines.append(f"  sections: {sections['images']} images of {sections['size'][1]}x{sections['size'][0]} px with "
                     f"masks, {len(shares)} classes (rarest: {rarest}, {shares[rarest]:.1%} of pixels)")
    if slide:
        lines.append(f"  slide: {slide['image']} ({slide['width']}x{slide['height']} px, {slide['levels']} levels, "
                     f"{slide['compression']}) and its mask {slide['mask']}")
    if survey:
        lines.append(f"  survey: {survey['samples']} samples, {survey['deposits']} deposits, {survey['faults']} "
                     f"faults, lithology on a {survey['grid']} grid ({survey['crs']}) in {survey['output']}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from minseg.train.ensemble import train_ensemble

    config = _load(args)
    members = args.members or None
    from minseg.enums import MemberStatus

    _check_output(config.run.uri, "run.output_uri")
    results = train_ensemble(config, members, resume=args.resume)
    failed = list(dict.fromkeys(r.member for r in results if r.status is not MemberStatus.DONE))  # once per fold
    members = list(dict.fromkeys(r.member for r in results))
    if failed:  # as segment's failed slides: the run ran, its table says which members to fix
        folds = any(r.fold is not None for r in results)  # k folds are not evaluated as an ensemble
        others = ("; the other members' checkpoints are complete (minseg evaluate uses them)"
                  if len(failed) < len(members) and not folds else "")
        print(f"minseg: {len(failed)} of {len(members)} members failed: {', '.join(failed)} (why: the members table)"
              f"{others}", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from minseg.ensemble.evaluate import evaluate_ensemble

    config = _load(args)
    _check_output(config.run.uri, "run.output_uri")
    result = evaluate_ensemble(config)
    print(f"ensemble manifest: {result.manifest_uri}")
    return 0


def cmd_score(args) -> int:
    """A selected ensemble on a labelled set it was not trained or selected on."""
    from minseg.ensemble.config import ScoreSettings
    from minseg.ensemble.score import score_ensemble

    # --data gives the sources: a config (or --set) may then set the rest of the data section (e.g. bit_depth)
    config = _load(args, {"data": {"sources": [{"uri": uri} for uri in args.data]}} if args.data else None)
    updates = {"manifest": args.manifest, "split": args.split, "output_uri": args.out}
    config.score = _section(ScoreSettings, (config.score or ScoreSettings()).model_dump(), updates,
                            {"manifest": "--manifest", "split": "--split", "output_uri": "--out"}, "score", args)
    if args.data:
        config.data = data_from_folders(config.data, args.data)
    _check_output(config.score.output(config.run.uri), "--out" if args.out else "score.output_uri", "score", config)
    result = score_ensemble(config)
    print(f"score -> {result.output} ({result.images} images scored, {result.quarantined} quarantined)")
    return 0


def data_from_folders(data, uris: list[str]):
    """``score --data``: the config's ``DataSettings`` (its sources the folders themselves when it gave none:
    ``cmd_score``'s defaults) with the folders given as its sources, each read like the config's first source (its
    layout, folders, name patterns, channels) but whole: that source's include / exclude picked a subset of
    another collection."""
    first = data.sources[0]
    sources = [first.model_copy(update={"uri": uri, "name": None, "include": None, "exclude": []}) for uri in uris]
    return data.model_copy(update={"sources": sources})


def cmd_select(args) -> int:
    """Choose another candidate from a finished evaluation, without predicting again."""
    from minseg.ensemble.manifest import manifest_destination, write_manifest
    from minseg.ensemble.config import SelectionSettings
    from minseg.ensemble.reports import EVALUATION_DOCUMENTS, complete_publication
    from minseg.ensemble.selection import build_manifest, evaluation_errors, read_candidates, read_evaluation, select
    from minseg.enums import SelectionRule
    from minseg.errors import InputError
    from minseg.io.storage import Storage, join_uri

    if args.candidate and (args.key or args.tpi_budget is not None or args.rule):
        raise InputError("--candidate takes that candidate; --key / --tpi-budget / --rule choose one: give one or "
                         "the other")
    if args.rule and args.tpi_budget is not None and args.rule != SelectionRule.TPI_BUDGET:
        raise InputError(f"--tpi-budget is the tpi_budget rule; --rule {args.rule} does not take it")
    if args.rule is SelectionRule.TPI_BUDGET and args.tpi_budget is None:
        raise InputError("--rule tpi_budget needs --tpi-budget SECONDS")
    storage = Storage()
    if complete_publication(storage, args.evaluation, "evaluate", EVALUATION_DOCUMENTS):
        print(f"{args.evaluation}: the evaluation's outputs were not all in place (its run was cut short while "
              "putting them there): put in place now", file=sys.stderr)
    document = read_evaluation(args.evaluation, storage)
    # where it goes, checked before the choice is said (a bad --out was refused after "chosen on the val split")
    target = manifest_destination(args.out, args.evaluation, args.name, storage, "--out" if args.out else "--name")
    _check_output(os.path.dirname(os.path.abspath(os.path.expanduser(target))) if not target.startswith("s3://")
                  else None, "--out")
    selection = rank_key = None  # --candidate: nothing chose it; the manifest records that (chosen_by)
    # an evaluation.json edited by hand or damaged: one line naming it, not a traceback from deep in the choice
    with evaluation_errors(join_uri(args.evaluation, "evaluation.json")) as recorded:
        if args.candidate:
            key = args.candidate
        else:
            candidates = read_candidates(document)
            current = dict(document.get("selection") or {})  # default: the evaluation's
            if args.rule and args.tpi_budget is None:  # another rule: the evaluation's budget does not go with it
                current.pop("tpi_budget_s", None)
            updates = ({"rule": SelectionRule.TPI_BUDGET, "tpi_budget_s": args.tpi_budget}
                       if args.tpi_budget is not None else {"rule": args.rule} if args.rule else {})
            selection = _section(SelectionSettings, current, updates, {"rule": "--rule", "tpi_budget_s":
                                 "--tpi-budget"}, "evaluation.selection", args, recorded)  # model_copy takes inf
            rank_key = args.key or document["rank_key"]
            key = select(candidates, rank_key, selection, document.get("selection_groups"),
                         document.get("selection_split") or "test").key
        # Build before any warning: a bad --key or a missing member is an error on its own.
        manifest = build_manifest(document, key, storage, args.name, selection, rank_key,
                                  chosen_by="--candidate" if args.candidate else None, source=recorded)
    if not args.candidate:
        if "selection_split" not in document:
            print(f"warning: {args.evaluation} predates choosing on validation: its candidates have test scores "
                  "only, so this choice is made on the test split (run minseg evaluate again to choose on "
                  "validation)", file=sys.stderr)
        elif "learned_held_out_weights" not in document and any(c.get("mode") == "learned"
                                                               for c in document["candidates"]):
            print(f"warning: {args.evaluation} predates scoring learned candidates out of fold: their validation "
                  "scores come from the pixels their weights were fitted to and favour them (run minseg evaluate "
                  "again)", file=sys.stderr)
        print(f"chosen on the {document.get('selection_split') or 'test'} split")
    if any("sha256" not in info for info in document["members"].values()):
        print(f"warning: {args.evaluation} predates recording the weights it scored: a member retrained since "
              "cannot be told apart, and its scores would go with other weights (run minseg evaluate again to "
              "record them)", file=sys.stderr)
    write_manifest(manifest, target, storage)
    print(f"selected {key} -> {target}")
    return 0


def cmd_prospect(args) -> int:
    from minseg.enums import MemberStatus
    from minseg.geo.config import ProspectInputError
    from minseg.geo.prospect import map_prospectivity, output_uri

    config = _load(args)
    if config.prospect is None:
        raise ProspectInputError("the prospect job needs a 'prospect' section in --config (see configs/prospect_*.yaml)")
    if args.out:
        config.prospect.output_uri = args.out
    source = "--out" if args.out else "prospect.output_uri"
    _check_output(output_uri(config), source, "prospect", config)
    result = map_prospectivity(config, resume=args.resume, output_source=source)
    metrics = result.metrics
    prediction, success = metrics["prediction_rate"], metrics["success_rate"]
    captures = ", ".join(f"{k.replace('top_', 'top ').replace('_percent', ' %')}: {v:.1f} %"
                         for k, v in prediction.items() if k.startswith("top_") and v is not None)
    print(f"prospectivity -> {result.output}")
    print(f"  kept elements: {', '.join(result.kept_elements) or 'none'}; channels: {len(result.channels)}")
    if prediction["auc"] is not None:
        print(f"  spatial CV prediction rate: AUC {prediction['auc']:.3f} over {prediction['deposits']} held-out "
              f"deposits; {captures}")
        thin = {side: [str(f["fold"]) for f in result.document["folds"] if side in f["thin_sides"]]
                for side in ("training", "held-out")}
        said = [f"fold {', '.join(folds)} {verb} under a third of an even split's windows or deposit windows"
                for folds, verb in ((thin["training"], "trained on"), (thin["held-out"], "held out")) if folds]
        if said:
            print(f"  ({'; '.join(said)}: the CV score says little; fewer prospect.cv.folds or other cv.block_cells)")
    if success["auc"] is not None:
        print(f"  success rate (final map, all deposits): AUC {success['auc']:.3f}")
    print(f"  targets: {result.targets} (targets.csv, targets.geojson)")
    failed = [m for m in result.members if m.status is not MemberStatus.DONE]
    if failed:
        print(f"minseg: {len(failed)} member trial(s) failed; see models/members.csv", file=sys.stderr)
    return 1 if failed else 0


def cmd_segment(args) -> int:
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import segment_slides

    config = _load(args)
    # slides and scenes given on the command line replace the config's
    given = bool(args.slides or args.scene)
    updates = {"slides": args.slides if given else None, "scenes": (args.scene or []) if given else None,
               "manifest_uri": args.manifest, "output_uri": args.out,
               "level": args.level, "force": True if args.force else None, "actors": args.actors,
               "block": args.block, "formats": args.format, "bit_depth": args.bit_depth}
    flags = {"slides": "SLIDES", "scenes": "--scene", "manifest_uri": "--manifest", "output_uri": "--out",
             "level": "--level", "force": "--force", "actors": "--actors", "block": "--block", "formats": "--format",
             "bit_depth": "--bit-depth"}
    config.segment = _section(SegmentSettings, (config.segment or SegmentSettings()).model_dump(), updates, flags,
                              "segment", args)
    _check_output(config.segment.output(config.run.uri), "--out" if args.out else "segment.output_uri", "segment",
                  config)
    result = segment_slides(config)
    print(f"segmented {len(result.done)}, skipped {len(result.skipped)}, failed {len(result.failed)} "
          f"slides -> {result.output}")
    for failure in result.failed:
        print(f"  failed: {failure.slide}: {failure.reason}", file=sys.stderr)
    if result.report_error:
        print(f"  no batch report: {result.report_error} (the tables are in place without it)", file=sys.stderr)
    if result.failed:
        count = len(result.failed)
        others = "; the other slides' outputs are complete" if result.done or result.skipped else ""
        print(f"minseg: {count} slide{'s' if count != 1 else ''} failed (see failures.json){others}", file=sys.stderr)
    return 1 if result.failed else 0


def _per_image(text: str, value: str, example: str) -> dict[str, str]:
    """``ppl=a,xpl=b`` -> {"ppl": "a", "xpl": "b"}: one value per image of a scene, by channel name."""
    given = {}
    for part in text.split(","):
        name, sep, item = part.partition("=")
        if not sep or not name.strip() or not item.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME={value} (e.g. {example})")
        if name.strip() in given:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is given twice in {text!r}: one value per image")
        given[name.strip()] = item.strip()
    return given


def _scene(text: str) -> dict[str, str]:
    """``ppl=a.tif,xpl=b.tif`` -> {"ppl": "a.tif", "xpl": "b.tif"} (--scene)."""
    return _per_image(text, "URI", "ppl=s01_ppl.tif,xpl=s01_xpl.tif")


def _bit_depth(text: str) -> int | dict[str, int]:
    """``12`` (every image), or ``bse=16,ppl=12`` (those images; the others as the ensemble's) (--bit-depth)."""
    example = "12, or bse=16 for one image of a scene"
    given = _per_image(text, "BITS", example) if "=" in text else {"": text}
    try:
        bits = {name: int(value) for name, value in given.items()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bits (e.g. {example})") from None
    return bits if "=" in text else bits[""]


def cmd_measure(args) -> int:
    from minseg.inference.config import MeasureSettings
    from minseg.inference.measure import measure_label_maps

    config = _load(args)
    # maps given on the command line replace measure.labels, and their references (or none) the config's
    updates = {"labels": args.labels or None, "references": (args.reference or []) if args.labels else args.reference,
               "classes": args.classes, "pixel_size_um": args.pixel_size_um, "output_uri": args.out}
    flags = {"labels": "LABELS", "references": "--reference", "classes": "--classes",
             "pixel_size_um": "--pixel-size-um", "output_uri": "--out"}
    config.measure = _section(MeasureSettings, (config.measure or MeasureSettings()).model_dump(), updates, flags,
                              "measure", args)
    settings = config.measure
    _check_output(settings.output(config.run.uri), "--out" if args.out else "measure.output_uri", "measure", config)
    result = measure_label_maps(config, {
        "classes": "--classes" if args.classes else f"{args.config or 'config'}: measure.classes",
        "pixel_size_um": "--pixel-size-um" if args.pixel_size_um is not None else "measure.pixel_size_um"})
    earlier = len(result.maps) - len(result.done)
    print(f"measured {len(result.done)}, failed {len(result.failed)} label maps -> {result.output}"
          + (f" (its tables list {len(result.maps)}: {earlier} measured there before)" if earlier else ""))
    if result.report_error:
        print(f"  no batch report: {result.report_error} (the tables are in place without it)", file=sys.stderr)
    for slide, lines in list(result.headlines.items())[:10]:  # a batch's are in mineralogy/mineralogy.md
        print(f"  {slide}:")
        for line in lines:
            print(f"    {line}")
    for failure in result.failed:
        print(f"  failed: {failure['slide']}: {failure['reason']}", file=sys.stderr)
    if result.failed:
        count = len(result.failed)
        print(f"minseg: {count} label map{'s' if count != 1 else ''} failed (see failures.json)", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_config(args) -> int:
    import yaml

    from minseg.config import ConfigError

    try:
        config = _load(args)
    except ConfigError as exc:
        if args.action != "validate" or exc.values is None:
            raise
        from minseg.job_checks import invalid_config_problems

        said = set(exc.problems)
        # said at once, not once the schema's are mended
        more = [problem for problem in invalid_config_problems(exc.values)
                if (problem.where, problem.reason) not in said]
        if not more:
            raise
        raise ConfigError(exc.source, [*exc.problems, *((p.where, p.reason) for p in more)],
                          [*exc.sources, *_job_problem_sources(args, more)]) from None
    if args.action == "show":
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from minseg.job_checks import job_problems

    problems = job_problems(config)
    if problems:
        raise ConfigError(args.config, [(p.where, p.reason) for p in problems], _job_problem_sources(args, problems))
    # an empty file, or one of comments or `null`: valid, but nothing of it is the user's
    print(f"{args.config}: valid" + ("" if config.model_fields_set else " (it sets nothing: every value is a default)"))
    return 0


def _job_problem_sources(args, problems: list) -> list[str]:
    """Where each of ``config validate``'s problems beyond the schema (``job_checks.JobProblem``) came from: the
    file where the file alone has it for any member it names; each environment variable (``MINSEG__...``) and
    ``--set`` option that brings it, on top of the file alone, for a member the file alone does not; all of them
    when only together they do."""
    from minseg.config import ConfigError, MinsegConfig, load_config, parse_set_options
    from minseg.config.base import ENV_PREFIX, env_overrides
    from minseg.errors import InputError
    from minseg.job_checks import invalid_config_problems, job_problems

    def checked(key: str) -> bool:  # the sections the job checks read: other values cannot bring their problems
        return key.partition(".")[0].partition("[")[0] in ("training", "prospect", "data", "evaluation")

    environment = {f"{ENV_PREFIX}{key.upper().replace('.', '__')}": value for key, value in env_overrides().items()
                   if checked(key)}
    options = [option for option in args.set or [] if checked(option.partition("=")[0].strip())]
    if not (environment or options):
        return [args.config] * len(problems)

    def facts_with(variables: dict[str, str], chosen: list[str]) -> set[tuple[str, str, str]]:
        try:
            config = load_config(args.config, MinsegConfig, overrides=parse_set_options(chosen), environ=variables)
        except ConfigError as exc:  # the members that validate on their own (the schema refuses something else)
            found = invalid_config_problems(exc.values, warn=False) if exc.values is not None else []
        except InputError:
            found = []
        else:
            found = job_problems(config, warn=False)
        return {fact for problem in found for fact in problem.facts()}

    alone = facts_with({}, [])
    brought = {**{f"environment {name}": facts_with({name: value}, []) - alone
                  for name, value in environment.items()},
               **{f"--set {option.partition('=')[0].strip()}": facts_with({}, [option]) - alone for option in options}}
    sources = []
    for problem in problems:
        facts = problem.facts()
        wheres = [args.config] if facts & alone else []
        wheres += [where for where, found in brought.items() if facts & found]
        sources.append(", ".join(wheres) or ", ".join(brought))
    return sources


def cmd_storage(args) -> int:
    """ls, cat, cp, rm of one path or s3:// URI. ls and rm take a glob too (the files it matches, as segment and
    measure take slides); cat and cp read one file and refuse a glob. A path that exists is never read as a glob.
    cp into a folder (one that exists, or a destination ending in '/') keeps the file's name; a folder is listed,
    never read, copied or deleted whole.

    Raises:
        ObjectNotFoundError: nothing at the path, or nothing matches the glob (naming it).
        StorageError: a glob given to cat / cp, a folder given to cat / cp / rm, a destination under a file."""
    from minseg.config import MinsegConfig, load_config
    from minseg.errors import InputError
    from minseg.io.storage import (ObjectNotFoundError, Storage, StorageError, glob_objects_and_hidden, has_glob,
                                   is_s3, join_uri, parse_uri, shown_name)

    settings = load_config(args.config, MinsegConfig).storage if args.config else None
    storage = Storage(settings)
    uri = args.uri
    # a name holding '[' or '*' is still a name: a file, or a folder (an S3 prefix, which HEAD does not find)
    glob_meant = has_glob(uri) and not storage.exists(uri) and not storage.is_folder(uri)
    if glob_meant and args.action in ("cat", "cp"):
        raise StorageError(f"{uri}: storage {args.action} takes one file, not a glob (no file has this name); "
                           "storage ls lists what it matches")
    if args.action in ("cp", "rm") and not glob_meant and storage.is_folder(uri):
        what = ("storage cp copies one file: copy the folder's files one by one (storage ls lists them)"
                if args.action == "cp" else
                f"storage rm deletes files: give a glob of those to delete, e.g. {join_uri(uri, '**')!r}")
        if not is_s3(uri) and os.path.islink(parse_uri(uri).path.rstrip("/")):
            what += f" ({uri} is a link to {os.path.realpath(parse_uri(uri).path)}: the files are that folder's)"
        raise StorageError(f"{uri}: is a folder; {what}")
    note = ""
    if glob_meant:  # ls, rm
        # as in a shell, '*' and '**' skip names starting with '.': said, since `rm 'out/**'` leaves them
        listed, skipped = glob_objects_and_hidden(uri, storage)
        note = (f"{len(skipped)} hidden file(s) not matched (e.g. {shown_name(skipped[0].uri)}): '*' and '**' skip "
                "names starting with '.', and what hidden folders hold, as in a shell; a pattern part starting with "
                "'.' matches them") if skipped else ""
        if not listed:
            raise ObjectNotFoundError(f"{uri}: no file matches this glob" + (f"; {note}" if note else ""))
    if args.action == "ls":
        if not glob_meant:
            listed = list(storage.list(uri))
            if not listed and not is_s3(uri) and not os.path.exists(parse_uri(uri).path):
                raise ObjectNotFoundError(f"{uri}: no such file or folder")  # an empty S3 prefix is just empty
        for info in listed:  # a name that is not UTF-8 printed with its bytes as \xNN (stdout takes no other)
            print(f"{info.size:>12}  {shown_name(info.uri)}")
    elif args.action == "cat":
        if is_s3(uri) and (uri.endswith("/") or not parse_uri(uri).path):  # a bucket or a prefix, never an object
            raise StorageError(f"{uri}: is a folder; storage cat reads one file (storage ls lists them)")
        try:
            stream = storage.open_read(uri)
        except ObjectNotFoundError:
            if storage.is_folder(uri):  # an S3 prefix (a local folder is refused by open_read itself)
                raise StorageError(f"{uri}: is a folder; storage cat reads one file (storage ls lists them)") from None
            raise
        with stream:  # streamed: a file of gigabytes (a slide) was read whole into memory
            first = stream.read(1 << 16)
            if b"\0" in first and sys.stdout.isatty():  # an image's bytes would garble the terminal
                raise InputError(f"{uri}: a binary file, not printed to a terminal; redirect it (minseg storage cat "
                                 "URI > FILE) or copy it (minseg storage cp URI FILE)")
            sys.stdout.buffer.write(first)
            shutil.copyfileobj(stream, sys.stdout.buffer, 8 << 20)
    elif args.action == "cp":
        target = args.destination
        # parsed first: 's3://' (no bucket) is refused, not joined with the file's name into a local 's3:/name'
        if not parse_uri(target).path or target.endswith("/") or storage.is_folder(target):  # into it, as cp does
            target = join_uri(target, posixpath.basename(parse_uri(uri).path.rstrip("/")))
        storage.copy(uri, target)
        print(f"copied {uri} -> {target}")
    elif args.action == "rm":
        for target in [info.uri for info in listed] if glob_meant else [uri]:
            storage.delete(target, missing_ok=glob_meant)  # a file just listed needs no second look
            print(f"deleted {shown_name(target)}")
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    import torch

    from minseg.models import build_model, list_models

    rows = []
    for entry in list_models(args.task):
        spec = entry.input_spec  # what the learner is built with when nothing else is known
        num_classes = spec.num_classes or args.num_classes
        with torch.device("meta"):  # counts parameters without allocating them
            model = build_model(entry.name, num_classes=num_classes, in_channels=spec.channels)
        options = {k: v for k, v in entry.options().items() if k != "pad_mode"}  # JSON keeps numbers and booleans
        rows.append({
            "name": entry.name,
            "task": str(entry.task),
            "params_m": round(model.parameter_count() / 1e6, 2),
            "in_channels": spec.channels,
            "num_classes": num_classes,
            "defaults": options,
            "paper": entry.paper,
            "description": entry.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2, default=str))  # an enum or a path option as its text
        return 0
    print(f"{'name':<22}{'task':<16}{'params':>9}  description")
    for row in rows:
        print(f"{row['name']:<22}{row['task']:<16}{row['params_m']:>8.2f}M  {row['description']}")
        print(f"{'':<22}paper: {row['paper']}")
        print(f"{'':<22}defaults: " + ", ".join(f"{k}={v}" for k, v in row["defaults"].items()))
    print(f"\nparameter counts at full size, {args.num_classes} classes unless a learner fixes its own, "
          "with each learner's default input channels (see --json)")
    return 0


def cmd_analyze(args) -> int:
    from minseg.analysis.kernels import analyze_kernels
    from minseg.io.storage import Storage

    _check_output(args.out, "--out")
    report = analyze_kernels(args.sources, args.out, Storage(), bins=args.bins, near_zero=args.near_zero,
                             relative=args.relative)
    members = list(dict.fromkeys(row["member"] for row in report.rows))
    print(f"{len(report.rows)} convolution layers of {len(members)} member(s): {', '.join(members)}")
    print(f"statistics: {report.csv_uri}")
    for figure in report.figures:
        print(f"figure:     {figure}")
    return 0


def cmd_info(args) -> int:
    import platform

    import numpy
    import ray
    import torch

    info = {
        "minseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ray": ray.__version__,
        "numpy": numpy.__version__,
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from minseg.enums import SelectionRule  # light: no torch, no Ray

    parser = argparse.ArgumentParser(
        prog="minseg",
        description="Mineral image segmentation with deep ensembles and prospectivity mapping, as Ray batch jobs.",
    )
    parser.add_argument("--version", action="version", version=f"minseg {__version__}")
    parser.add_argument("--log-level", default=None, type=_log_level,
                        help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL, any case (default: MINSEG_LOG_LEVEL)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show Ray's, Ray Data's and Ray Train's own output (by default it goes to Ray's log "
                             "folder, named in the ray.ready line); --log-level debug and MINSEG_LOG_LEVEL=debug "
                             "do the same")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end demo on local Ray and local files")
    _add_config_options(demo)
    demo.add_argument("--out", type=_text, help="output folder or s3:// prefix (default: run.output_uri)")
    demo.add_argument("--fresh", action="store_true", help="retrain the members even if a previous demo run "
                      "trained them from the same data and settings (by default they are reused)")
    demo.set_defaults(func=cmd_demo)

    synth = sub.add_parser("synth", help="write deterministic synthetic sections, slides and surveys")
    # no choices=: Python 3.11 checks a '*' positional's list default (or []) against them and refuses it
    synth.add_argument("what", nargs="*", type=_one_of("all", "sections", "slide", "survey"),
                       metavar="{all,sections,slide,survey}", help="what to make (default: all)")
    synth.add_argument("--out", required=True, type=_text, help="output folder or s3:// prefix")
    synth.add_argument("--seed", type=_seed, help="seed, 0 to 2**32 - 1 (default: synth.seed)")
    _add_config_options(synth)
    synth.set_defaults(func=cmd_synth)

    train = sub.add_parser("train", help="train every ensemble member of a config concurrently (Ray Train)")
    _add_config_options(train, required=True)
    train.add_argument("--members", type=_member_names, help="comma-separated member names (default: all)")
    train.add_argument("--resume", action="store_true", help="continue a run: finished members are kept, others resume")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate members, rank, fuse (RUEL-k), select, write the manifest")
    _add_config_options(evaluate, required=True)
    evaluate.set_defaults(func=cmd_evaluate)

    select = sub.add_parser("select", help="pick another ensemble from a finished evaluation (no recomputation)")
    select.add_argument("evaluation", type=_text, help="evaluation folder (holds evaluation.json)")
    select.add_argument("--key", type=_text, help="metric to maximise (default: the evaluation's rank key)")
    select.add_argument("--tpi-budget", type=float, help="seconds per image the ensemble may take")
    select.add_argument("--rule", type=SelectionRule, choices=list(SelectionRule),
                        help="best, tpi_budget (with --tpi-budget) or one_se: the most members within one standard "
                             "error of the best (default: the evaluation's rule)")
    select.add_argument("--candidate", type=_text, help="take this candidate, e.g. RUEL-5-WV or member:learner03 "
                        "(instead of choosing by --key / --tpi-budget / --rule)")
    select.add_argument("--name", default="selected", type=_file_name,
                        help="name recorded in the manifest (and its file name, manifest-NAME.json)")
    select.add_argument("--out", type=_text, help="manifest .json path or URI, or a folder (one that exists, or "
                        "ending in /) for manifest-NAME.json; only a manifest is replaced (default: beside "
                        "evaluation.json)")
    select.set_defaults(func=cmd_select)

    segment = sub.add_parser("segment", help="segment whole slides with a selected ensemble (Ray actor pool)")
    segment.add_argument("slides", nargs="*", type=_text,
                         help="slide paths, s3:// URIs or globs (instead of segment.slides)")
    _add_config_options(segment)
    segment.add_argument("--scene", action="append", type=_scene, metavar="NAME=URI,NAME=URI",
                         help="the images of one scene by channel name, e.g. ppl=a_ppl.tif,xpl=a_xpl.tif, for "
                              "ensembles trained on several images per scene (repeatable; instead of segment.scenes)")
    segment.add_argument("--manifest", type=_text, help="ensemble manifest (default: segment.manifest_uri)")
    segment.add_argument("--out", type=_text,
                         help="output folder or s3:// prefix (default: segment.output_uri)")
    segment.add_argument("--level", type=int, help="pyramid level to segment (default 0: full resolution)")
    segment.add_argument("--actors", type=int, help="inference actors")
    segment.add_argument("--force", action="store_true", help="redo slides whose outputs already exist")
    segment.add_argument("--block", type=int, help="output block side in pixels (default 4096): one worker's unit")
    segment.add_argument("--bit-depth", type=_bit_depth, metavar="BITS|NAME=BITS,...",
                         help="significant bits of slides stored with 16 bits per sample, e.g. 12 for a 12-bit "
                              "camera; bse=16 for one image of a scene (default: the ensemble's, data.bit_depth or "
                              "channels[].bit_depth of its training images)")
    segment.add_argument("--format", action="append", choices=["zarr", "tiff"],
                         help="outputs: the OME-Zarr is always written; --format tiff adds labels.tif / "
                              "uncertainty.tif (repeatable)")
    segment.set_defaults(func=cmd_segment)

    measure = sub.add_parser("measure", help="mineralogy of existing label maps: modal, sizes, liberation, "
                             "association, per-object tables (one Ray task per map)")
    measure.add_argument("labels", nargs="*", type=_text,
                         help="labels.tif / segmentation.ome.zarr from segment, or class-id "
                         "TIFF/PNG masks: paths, s3:// URIs or globs (instead of measure.labels)")
    _add_config_options(measure)
    measure.add_argument("--reference", action="append", metavar="MASK", type=_text,
                         help="reference mask for the label map in the same position (repeat once per map): "
                              "the errors of every number against it")
    measure.add_argument("--classes", type=_class_names,
                         help="class names by id, comma-separated, for maps that do not name them (a map that "
                              "names its classes must agree)")
    measure.add_argument("--pixel-size-um", type=float, help="µm per pixel (default: the map's own, if any)")
    measure.add_argument("--out", type=_text,
                         help="output folder or s3:// prefix (default: measure.output_uri)")
    measure.set_defaults(func=cmd_measure)

    score = sub.add_parser("score", help="score a selected ensemble (its manifest) on a new labelled set: same "
                           "tiling and fusion, the full report")
    _add_config_options(score)
    score.add_argument("--manifest", type=_text,
                       help="ensemble manifest from evaluate / select (instead of score.manifest)")
    score.add_argument("--data", action="append", metavar="URI", type=_text,
                       help="labelled set: folder or archive, local or s3:// (repeatable; instead of data.sources, "
                            "read like the config's first source; classes and channels default to the manifest's)")
    score.add_argument("--split", choices=["all", "train", "val", "test"],
                       help="all (default): every labelled item; or that split of data.split")
    score.add_argument("--out", type=_text,
                       help="output folder or s3:// prefix (default: <run>/score/<score.name>)")
    score.set_defaults(func=cmd_score)

    prospect = sub.add_parser("prospect", help="map mineral prospectivity: samples + evidence -> MFAF ensemble -> "
                              "maps, curves and ranked targets")
    _add_config_options(prospect, required=True)
    prospect.add_argument("--out", type=_text,
                          help="output folder or s3:// prefix (default: prospect.output_uri)")
    prospect.add_argument("--resume", action="store_true", help="keep member trials that already finished")
    prospect.set_defaults(func=cmd_prospect)

    config = sub.add_parser("config", help="validate a config file or show it with defaults filled in")
    config.add_argument("action", choices=["validate", "show"],
                        help="validate: every problem at once, and what the job would refuse; show: the config with "
                        "defaults filled in, as YAML")
    config.add_argument("config", help="YAML config (path or s3:// URI)")
    config.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set run.seed=3")
    config.set_defaults(func=cmd_config)

    storage = sub.add_parser("storage", help="list, read, copy or delete paths and s3:// URIs")
    storage.add_argument("action", choices=["ls", "cat", "cp", "rm"],
                         help="ls: list; cat: print a file; cp: copy a file; rm: delete a file, or the files a glob "
                              "matches")
    storage.add_argument("uri", help="path or s3:// URI; for ls and rm also a quoted glob ('dir/*.txt', 'dir/**')")
    storage.add_argument("destination", nargs="?", help="for cp: the new file, or a folder to copy into (an existing "
                         "one, or ending in '/')")
    storage.add_argument("--config", "-c", help="config whose storage section to use")
    storage.set_defaults(func=cmd_storage)

    models = sub.add_parser("models", help="list the registered learners with parameter counts and defaults")
    models.add_argument("--task", choices=["segmentation", "classification"], help="only the learners of this task")
    models.add_argument("--num-classes", type=_at_least_one, default=9,
                        help="classes the parameter counts are for, where the learner fixes none (default: 9)")
    models.add_argument("--json", action="store_true",
                        help="one JSON list: name, task, params_m, in_channels, num_classes, defaults, paper")
    models.set_defaults(func=cmd_models)

    analyze = sub.add_parser("analyze", help="analyses of trained members")
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    kernels = analyses.add_parser(
        "kernels", help="per-layer histograms and statistics of trained convolution kernels (the microplastic "
                        "paper's network comparison)")
    kernels.add_argument("sources", nargs="+", metavar="RUN_MANIFEST_OR_CHECKPOINT",
                         help="a training run, an ensemble manifest.json, or checkpoint directories (local or s3://)")
    kernels.add_argument("--out", required=True, type=_text,
                         help="folder or s3:// prefix for kernels.csv and the figures")
    kernels.add_argument("--bins", type=int, default=60, help="histogram bins per layer, 1 to 1000 (default 60)")
    kernels.add_argument("--near-zero", type=float, default=0.01, help="|w| below this counts as near zero (0.01)")
    kernels.add_argument("--relative", type=float, default=0.05,
                         help="|w| below this share of the layer's max |w| counts as relatively small (0.05)")
    kernels.set_defaults(func=cmd_analyze)

    info = sub.add_parser("info", help="versions and accelerator availability")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from minseg.errors import MinsegError
    from minseg.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose or args.log_level == "DEBUG":  # debug shows Ray's own output, as MINSEG_LOG_LEVEL=debug does
        os.environ["MINSEG_VERBOSE"] = "1"  # read by init_ray, also in job processes this one starts
    try:
        configure_logging(args.log_level)
    except MinsegError as exc:  # MINSEG_LOG_LEVEL / MINSEG_LOG_FORMAT: a usage error
        print(f"minseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.command == "storage" and args.action == "cp" and not args.destination:
        parser.error("storage cp needs a destination")
    if args.command == "storage" and args.action != "cp" and args.destination:
        if args.action == "cat":  # cat reads one file: a glob is refused too
            parser.error(f"storage cat takes one path; {args.destination!r} is one too many")
        parser.error(f"storage {args.action} takes one path or glob; {args.destination!r} is one too many (quote a "
                     "glob, e.g. 'dir/*.txt', for minseg to expand it)")
    from minseg.runtime import stop_on_sigterm, terminated

    with stop_on_sigterm():
        return _run(args, terminated)


def _run(args, terminated) -> int:
    """``args.func`` with its errors as the CLI says them (``main``)."""
    from pydantic import ValidationError

    from minseg.errors import MinsegError

    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's flush at exit
        return code
    except MinsegError as exc:  # input errors exit 2, run errors 1: minseg/errors.py
        print(f"minseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:  # a value set from the command line that does not validate
        from minseg.config import section_error

        print(f"minseg: error: {section_error(exc, '', 'command line')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = " (what finished is kept: the same command with --resume continues)" if hasattr(args, "resume") else ""
        if terminated():
            print(f"minseg: terminated (SIGTERM){again}", file=sys.stderr)
            return 143
        print(f"minseg: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe or socket broke: an error like any other
            raise
        _silence_stdout()  # `minseg models | head`: the reader has what it wanted
        return 141  # as a process SIGPIPE ended (128 + 13)
    except Exception as exc:  # a minseg error raised in a Ray task or actor no command unwrapped: its message
        from minseg.runtime import minseg_error_in

        found = minseg_error_in(exc)
        if found is None:
            raise
        print(f"minseg: error: {found}", file=sys.stderr)
        return found.exit_code


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error condition on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout has no descriptor
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise BrokenPipeError again (Python's
    documented way, library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
