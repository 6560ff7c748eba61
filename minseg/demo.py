"""The embedded-default demo: what README's main command runs.

End to end on a local Ray instance, everything through the storage layer to
``run.output_uri`` (a local folder by default, or ``s3://``): synthesise training
sections, a whole-slide BigTIFF (with its true mask) and a geochemical survey →
train the tiny ensemble concurrently → evaluate, rank and select → segment the
slide on the actor pool → score the stitched label map against the slide's truth.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from minseg.config.base import JobProblem
from minseg.config.schema import MinsegConfig
from minseg.errors import InputError
from minseg.io.storage import ObjectNotFoundError, Storage, absolute_uri, join_uri
from minseg.logs import get_logger, log_event
from minseg.preflight import job_paths
from minseg.runtime import init_ray
from minseg.synth.dataset import write_section_dataset
from minseg.synth.slide import write_synthetic_slide
from minseg.synth.survey import write_survey

DEMO_INPUTS = "demo_inputs.json"  # beside a demo run's members: what they were trained from

log = get_logger("demo")


@dataclass
class SynthResult:
    """What ``run_synth`` wrote: per product (sections, slide, survey) its description, under ``output``.
    ``document`` is ``synth_manifest.json`` (with the resolved config)."""

    output: str
    seconds: float
    outputs: dict
    document: dict


@dataclass
class SlideScore:
    """The demo slide segmented by the selected ensemble, scored against the slide's true mask; and, when the
    selection is an ensemble, by its best member alone (the member ranked first on validation), scored the same
    way: what the ensemble adds."""

    output: str
    seconds: float
    shape: tuple[int, int]
    pixel_accuracy: float
    miou: float
    mineralogy: list[str] = field(default_factory=list)  # headline lines, errors against the true mask included
    selected: str = ""  # the selected candidate's key
    per_class_iou: dict[str, float] = field(default_factory=dict)
    best_member: str | None = None  # the selection's top-ranked member; None: the selection is a single member
    rank_split: str = "val"  # where the members were ranked
    best_member_miou: float | None = None
    best_member_per_class_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoResult:
    """Everything the demo made: synthetic data, the trained members, the evaluation, the scored slide."""

    synth: SynthResult
    trained: bool = False  # training ran (the config has members and sections)
    members: list = field(default_factory=list)  # train.ensemble.MemberResult, finished ones
    evaluation: object | None = None  # ensemble.evaluate.EvaluationResult
    slide: SlideScore | None = None


#: the folders synth writes its products in, under its output
PRODUCT_FOLDERS = {"sections": "sections", "slide": "slides", "survey": "survey"}


SYNTH_MANIFEST = "synth_manifest.json"


def refuse_foreign_products(output_uri: str, synth, storage: Storage) -> set[str]:
    """Raise InputError when ``output_uri`` holds, in a folder a product of ``synth`` is written in (``sections/``,
    ``slides/``, ``survey/``), files minseg did not write: a geologist's own ``survey/samples.csv`` would be
    overwritten. A folder is synth's when ``synth_manifest.json`` lists its product, written (``outputs``) or
    begun (``products``: written first, so a run cut short is rerun, not refused); a damaged manifest is
    taken as synth's (its name is minseg's). Returns the products the manifest there names (none when there is
    none or it is damaged)."""
    manifest = join_uri(output_uri, SYNTH_MANIFEST)
    try:
        document = storage.read_json(manifest)
    except ObjectNotFoundError:
        document = {}
    except ValueError:  # damaged (not JSON): minseg's file, a run cut short while writing it
        return set()
    document = document if isinstance(document, dict) else {}
    ours = set(document.get("outputs") or {}) | set(document.get("products") or [])
    taken = [f"{folder}/" for product, folder in PRODUCT_FOLDERS.items()
             if getattr(synth, product) is not None and product not in ours
             and storage.holds_files(join_uri(output_uri, folder))]
    if taken:
        raise InputError(f"{output_uri} holds {', '.join(taken)} that minseg did not write (no synth_manifest.json "
                         "there lists them); the synthetic data would be written over them: give another folder "
                         "(--out)")
    return ours


def run_synth(config: MinsegConfig, output_uri: str | None = None) -> SynthResult:
    """Write every synthetic product the config asks for under ``output_uri``.

    Raises:
        InputError: the folder holds files of its own where products go (``refuse_foreign_products``), before
            anything is written."""
    storage = Storage(config.storage)
    output_uri = absolute_uri(output_uri or config.run.output_uri)
    synth = config.synth
    known = refuse_foreign_products(output_uri, synth, storage)  # and what an earlier run there wrote
    if synth.sections is not None:  # before anything is written: a Ray that cannot start leaves no folder behind
        init_ray(config.ray, job_paths([], [output_uri]))
    products = [product for product in PRODUCT_FOLDERS if getattr(synth, product) is not None]
    # first, naming what this run writes (and what an earlier one wrote there): a run cut short leaves its folders
    # recognised as synth's, so the next run rewrites them
    storage.write_json(join_uri(output_uri, SYNTH_MANIFEST),
                       {"status": "incomplete", "products": sorted(known | set(products)), "outputs": {}})
    started = time.monotonic()
    outputs: dict[str, object] = {}
    if synth.sections is not None:
        outputs["sections"] = write_section_dataset(
            join_uri(output_uri, PRODUCT_FOLDERS["sections"]), synth.sections, synth.seed, storage,
            config.ray.task_cpus
        )
    if synth.slide is not None:
        outputs["slide"] = write_synthetic_slide(
            join_uri(output_uri, PRODUCT_FOLDERS["slide"], "synthetic_slide.tif"),
            join_uri(output_uri, PRODUCT_FOLDERS["slide"], "synthetic_slide_mask.tif"),
            synth.slide,
            synth.seed,
            storage,
        )
    if synth.survey is not None:
        outputs["survey"] = write_survey(join_uri(output_uri, PRODUCT_FOLDERS["survey"]), synth.survey, synth.seed,
                                         storage)
    seconds = round(time.monotonic() - started, 1)
    document = {"run": config.run.name, "output": output_uri, "seconds": seconds, "outputs": outputs,
                "products": sorted(known | set(products)), "config": config.model_dump(mode="json")}
    storage.write_json(join_uri(output_uri, SYNTH_MANIFEST), document)
    log_event(log, "synth.done", output=output_uri, seconds=seconds)
    return SynthResult(output_uri, seconds, outputs, document)


def train_on_synthetic_sections(config: MinsegConfig, output_uri: str, fresh: bool = False):
    """Train the config's members on the sections just synthesised under ``output_uri``.

    A second demo run reuses what a previous one trained (its finished members; unfinished ones continue) when it
    was made from the same synthetic data and the same data and training settings; otherwise (or with ``fresh``)
    the previous run is removed and the members are trained afresh. Either way it says so."""
    from minseg.data.config import DataSettings, SourceSettings
    from minseg.train.ensemble import train_ensemble

    data = config.data or DataSettings(sources=[SourceSettings(uri=join_uri(output_uri, "sections"))])
    config.data = data.model_copy(update={"sources": [SourceSettings(uri=join_uri(output_uri, "sections"))],
                                          "classes": demo_classes(config)})
    config.run.output_uri = output_uri
    storage = Storage(config.storage)
    inputs = {"synth": config.synth.model_dump(mode="json"), "data": config.data.model_dump(mode="json"),
              "training": config.training.model_dump(mode="json"), "seed": config.run.seed}
    record = join_uri(config.run.uri, DEMO_INPUTS)
    refuse_foreign_run(config.run.uri, storage)
    previous = storage.read_json(record) if storage.exists(record) else None
    trained_before = previous is not None
    resume = False
    if trained_before and not fresh and previous == inputs:
        resume = True
        print(f"Reusing the members a previous demo trained in {config.run.uri} (same data and settings; "
              "minseg demo --fresh retrains them)")
    elif trained_before:
        why = "--fresh" if fresh else "its data or settings differ from this run's"
        print(f"Retraining: removing the previous demo run in {config.run.uri} ({why})")
        storage.delete_prefix(config.run.uri.rstrip("/") + "/")
    storage.write_json(record, inputs, indent=1)
    return train_ensemble(config, resume=resume)


def demo_classes(config: MinsegConfig):
    """The class map (``ClassMapSettings``) the demo trains its members with: ``data.classes`` when the config
    gives it, else the synthetic sections' minerals."""
    from minseg.data.config import ClassMapSettings
    from minseg.synth.minerals import class_map_document

    if config.data is not None and config.data.classes is not None:
        return config.data.classes
    return ClassMapSettings(classes=[{"name": c["name"], "codes": c["codes"], "color": c["color"]}
                                     for c in class_map_document()["classes"]])


def demo_problems(config: MinsegConfig) -> list[JobProblem]:
    """What the demo's later phases would refuse, said before it synthesises and trains for minutes: the
    evaluation's rank key against the classes it trains with (``demo_classes``; ``config validate`` says it too)."""
    from minseg.ensemble.evaluate import rank_key_problem

    if config.training is None or config.synth.sections is None or config.evaluation is None:
        return []
    problem = rank_key_problem(config, [c.name for c in demo_classes(config).classes])
    return [problem] if problem else []


def refuse_foreign_run(run_uri: str, storage: Storage) -> None:
    """Raise InputError when ``run_uri`` holds a training run the demo did not write (``members.json`` without
    ``demo_inputs.json``): the demo retrains over its own runs only (``--config`` of a recipe with the demo's
    default output is that recipe's own run folder)."""
    if storage.exists(join_uri(run_uri, "members.json")) and not storage.exists(join_uri(run_uri, DEMO_INPUTS)):
        raise InputError(f"{run_uri} holds a training run the demo did not write (no {DEMO_INPUTS}), or one of a "
                         "demo older than that record; the demo would retrain over it. Give the demo another folder "
                         "(--out) or run.name, or delete the folder if it is an old demo's")


def run_demo(config: MinsegConfig, fresh: bool = False) -> DemoResult:
    """Synthesise → train (or reuse a previous run's members, unless ``fresh``) → evaluate and select → segment
    the slide and score it; prints where to look.

    Raises:
        InputError: the run folder holds a training run the demo did not write (``refuse_foreign_run``), before
            anything is written."""
    from minseg.enums import MemberStatus

    started = time.monotonic()
    if problems := demo_problems(config):
        raise InputError("; ".join(f"{p.where}: {p.reason}" for p in problems))
    if config.training is not None and config.synth.sections is not None:
        refuse_foreign_run(join_uri(absolute_uri(config.run.output_uri), config.run.name), Storage(config.storage))
    result = DemoResult(run_synth(config))
    out = result.synth.output
    if config.training is not None and config.synth.sections is not None:
        trained = train_on_synthetic_sections(config, out, fresh)
        result.trained = True
        result.members = [r for r in trained if r.status is MemberStatus.DONE]
        if config.evaluation is not None and result.members:
            from minseg.ensemble.evaluate import evaluate_ensemble

            result.evaluation = evaluate_ensemble(config)
            if config.segment is not None and "slide" in result.synth.outputs:
                result.slide = segment_synthetic_slide(config, result.synth, result.evaluation)
    print(demo_report(config, result, time.monotonic() - started))
    return result


def demo_report(config: MinsegConfig, result: DemoResult, seconds: float) -> str:
    """What the demo made and where, for the console."""
    out = result.synth.output
    shown = os.path.relpath(out) if not out.startswith("s3://") else out
    lines = [
        "",
        f"minseg demo finished in {seconds:.0f} s. Outputs under {shown}/:",
        "  sections/images, sections/masks   synthetic training photos + label masks",
        "  slides/                           whole-slide pyramidal BigTIFF + mask",
        "  survey/                           geochemical survey (CSV/Parquet, GeoTIFF, GeoJSON)",
        "  synth_manifest.json               what was made, with the resolved config",
    ]
    run = config.run.name
    if result.trained:
        lines += [
            f"  {run}/members.csv         the trained ensemble members (status, best mIoU, checkpoints)",
            f"  {run}/members/*/curves.png  loss and validation curves per member",
            f"  {run}/data/               dataset statistics, splits, quarantine report",
        ]
    if result.evaluation is not None:
        lines += [
            f"  {run}/evaluation/{config.evaluation.name}/manifest.json   the selected ensemble "
            f"({result.evaluation.selected.key})",
            f"  {run}/evaluation/{config.evaluation.name}/table*.md       member, RUEL-k and per-class tables; *.png figures",
        ]
    if result.slide is not None:
        slide = result.slide
        where = slide.output[len(out):].lstrip("/") if slide.output.startswith(out) else slide.output
        lines += [
            f"  {where}/synthetic_slide/  segmentation.ome.zarr (NGFF 0.5: image, class labels with palette, "
            "uncertainty), labels.tif + uncertainty.tif (pyramidal BigTIFF export), preview.png, "
            "summary.json (modal mineralogy, grain statistics)",
            f"  {where}/slides.csv        one row per slide; run_summary.json, failures.json",
            f"  {where}/synthetic_slide/mineralogy.json, grains.parquet, particles.parquet, *.png   automated "
            "mineralogy (docs/mineralogy.md); mineralogy/mineralogy.md: the batch report",
            f"Segmented {slide.shape[0]}x{slide.shape[1]} px in {slide.seconds:.0f} s; against the "
            f"slide's true mask: pixel accuracy {slide.pixel_accuracy:.3f}, mIoU {slide.miou:.3f}",
            *slide_comparison(slide),
            "Mineralogy of the slide:",
            *[f"  {line}" for line in slide.mineralogy],
        ]
    return "\n".join(lines)


def slide_comparison(slide: SlideScore) -> list[str]:
    """The selected ensemble against its best member on the slide, per class: what the ensemble adds."""
    if not slide.selected:  # not from an evaluation
        return []
    if slide.best_member is None:
        return [f"The selection on validation is a single member ({slide.selected}): no ensemble beat it there."]
    gain = slide.miou - slide.best_member_miou
    lines = [f"Selected ensemble {slide.selected}: slide mIoU {slide.miou:.3f}; its best member alone "
             f"({slide.best_member}, ranked first on {_SPLIT_NAMES.get(slide.rank_split, slide.rank_split)}): "
             f"{slide.best_member_miou:.3f} ({gain:+.3f})",
             "  IoU per class (best member -> ensemble): " + ", ".join(
                 f"{name} {_iou(slide.best_member_per_class_iou.get(name))}->{_iou(iou)}"
                 for name, iou in slide.per_class_iou.items())]
    return lines


_SPLIT_NAMES = {"val": "validation"}


def _iou(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"  # a class absent from slide and prediction


def segment_synthetic_slide(config: MinsegConfig, synth: SynthResult, evaluation=None) -> SlideScore:
    """Segment the demo slide with the ensemble just selected (``config.segment``'s manifest), then score it
    against the slide's mask; when ``evaluation`` (the ``EvaluationResult`` that selected it) says the selection is
    an ensemble, segment and score the slide with its best member too (labels only)."""
    from minseg.ensemble.manifest import write_manifest
    from minseg.ensemble.selection import MEMBER_PREFIX, build_manifest
    from minseg.inference.measure import REFERENCE_DOCUMENT, against_reference
    from minseg.mineralogy.report import headline_text
    from minseg.mineralogy.slide import DOCUMENT, MeasureSpec

    slide = synth.outputs["slide"]
    storage = Storage(config.storage)
    segmented, folder, truth = _segment_and_score(config, slide, storage)
    # the mineralogy of the true mask, measured the same way: how far off each number is
    document = json.loads(storage.read_text(join_uri(folder, DOCUMENT)))
    spec = MeasureSpec(tuple(document["classes"]), config.mineralogy, document["pixel_size_um"])
    document["reference"] = against_reference(document, (slide["height"], slide["width"]), slide["mask"], spec,
                                              storage, join_uri(folder, REFERENCE_DOCUMENT))
    storage.write_json(join_uri(folder, DOCUMENT), document, indent=1)
    score = SlideScore(segmented.output, segmented.done[0]["wall_seconds"], (slide["height"], slide["width"]),
                       truth["accuracy"], truth["miou"], headline_text(document),
                       evaluation.selected.key if evaluation is not None else "", dict(zip(truth["classes"], truth["iou"])))
    if evaluation is None or evaluation.selected.is_member:
        return score
    best = evaluation.selected.members[0]  # RUEL-k's members in rank order: its best voter
    manifest_uri = join_uri(evaluation.output_uri, "best-member", "manifest.json")
    write_manifest(build_manifest(evaluation.document, f"{MEMBER_PREFIX}{best}", storage, "best-member"),
                   manifest_uri, storage)
    alone = config.model_copy(deep=True)
    alone.segment = alone.segment.model_copy(update={"manifest_uri": manifest_uri, "name": "best-member",
                                                     "formats": []})  # labels for the comparison: no exports
    alone.mineralogy = alone.mineralogy.model_copy(update={"tables": False, "plots": False})
    _, _, truth = _segment_and_score(alone, slide, storage)
    score.best_member, score.best_member_miou, score.rank_split = best, truth["miou"], evaluation.rank_split
    score.best_member_per_class_iou = dict(zip(truth["classes"], truth["iou"]))
    return score


def _segment_and_score(config: MinsegConfig, slide: dict, storage: Storage):
    """(segment result, the slide's output folder, its comparison with the true mask), the comparison also
    written beside the slide's outputs as truth_comparison.json."""
    from minseg.errors import RunError
    from minseg.inference.compare import compare_label_maps
    from minseg.inference.outputs import ZARR
    from minseg.inference.segment import segment_slides
    from minseg.synth.minerals import CLASS_NAMES

    config.segment = config.segment.model_copy(update={"slides": [slide["image"]], "force": True})
    segmented = segment_slides(config)
    if not segmented.done:
        raise RunError(f"the demo slide failed to segment: {[f.to_document() for f in segmented.failed]}")
    folder = join_uri(segmented.output, segmented.done[0]["slide"])
    truth = compare_label_maps(join_uri(folder, ZARR), slide["mask"], list(CLASS_NAMES), storage=storage)
    storage.write_json(join_uri(folder, "truth_comparison.json"), truth)
    return segmented, folder, truth
