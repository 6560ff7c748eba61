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

from minseg.config.schema import MinsegConfig
from minseg.io.storage import Storage, absolute_uri, join_uri
from minseg.logs import get_logger, log_event
from minseg.runtime import init_ray
from minseg.synth.dataset import write_section_dataset
from minseg.synth.slide import write_synthetic_slide
from minseg.synth.survey import write_survey

log = get_logger("demo")


def run_synth(config: MinsegConfig, output_uri: str | None = None) -> dict:
    """Write every synthetic product the config asks for under ``output_uri``."""
    storage = Storage(config.storage)
    output_uri = absolute_uri(output_uri or config.run.output_uri)
    synth = config.synth
    started = time.monotonic()
    outputs: dict[str, object] = {}
    if synth.sections is not None:
        init_ray(config.ray)
        outputs["sections"] = write_section_dataset(
            join_uri(output_uri, "sections"), synth.sections, synth.seed, storage, config.ray.task_cpus
        )
    if synth.slide is not None:
        outputs["slide"] = write_synthetic_slide(
            join_uri(output_uri, "slides", "synthetic_slide.tif"),
            join_uri(output_uri, "slides", "synthetic_slide_mask.tif"),
            synth.slide,
            synth.seed,
            storage,
        )
    if synth.survey is not None:
        outputs["survey"] = write_survey(join_uri(output_uri, "survey"), synth.survey, synth.seed, storage)
    manifest = {
        "run": config.run.name,
        "output": output_uri,
        "seconds": round(time.monotonic() - started, 1),
        "outputs": outputs,
        "config": config.model_dump(mode="json"),
    }
    storage.write_text(join_uri(output_uri, "synth_manifest.json"), json.dumps(manifest, indent=2))
    log_event(log, "synth.done", output=output_uri, seconds=manifest["seconds"])
    return manifest


def train_on_synthetic_sections(config: MinsegConfig, output_uri: str):
    """Train the config's members on the sections just synthesised under ``output_uri``."""
    from minseg.data.config import ClassMapSettings, DataSettings, SourceSettings
    from minseg.synth.minerals import class_map_document
    from minseg.train.ensemble import train_ensemble

    classes = ClassMapSettings(classes=[{"name": c["name"], "codes": [c["code"]], "color": c["color"]}
                                        for c in class_map_document()["classes"]])
    data = config.data or DataSettings(sources=[SourceSettings(uri=join_uri(output_uri, "sections"))])
    config.data = data.model_copy(update={"sources": [SourceSettings(uri=join_uri(output_uri, "sections"))],
                                          "classes": data.classes or classes})
    config.run.output_uri = output_uri
    return train_ensemble(config)


def run_demo(config: MinsegConfig) -> dict:
    started = time.monotonic()
    manifest = run_synth(config)
    out = manifest["output"]
    shown = os.path.relpath(out) if not out.startswith("s3://") else out
    if config.training is not None and config.synth.sections is not None:
        results = train_on_synthetic_sections(config, out)
        manifest["members"] = [r.member for r in results if r.status == "done"]
        if config.evaluation is not None and manifest["members"]:
            from minseg.ensemble.evaluate import evaluate_ensemble

            manifest["ensemble"] = evaluate_ensemble(config)
            if config.segment is not None and "slide" in manifest["outputs"]:
                manifest["segment"] = segment_synthetic_slide(config, manifest)
    lines = [
        "",
        f"minseg demo finished in {time.monotonic() - started:.0f} s. Outputs under {shown}/:",
        "  sections/images, sections/masks   synthetic training photos + label masks",
        "  slides/                           whole-slide pyramidal BigTIFF + mask",
        "  survey/                           geochemical survey (CSV/Parquet, GeoTIFF, GeoJSON)",
        "  synth_manifest.json               what was made, with the resolved config",
    ]
    if "members" in manifest:
        run = config.run.name
        lines += [
            f"  {run}/members.csv         the trained ensemble members (status, best mIoU, checkpoints)",
            f"  {run}/members/*/curves.png  loss and validation curves per member",
            f"  {run}/data/               dataset statistics, splits, quarantine report",
        ]
    if "ensemble" in manifest:
        lines += [
            f"  {run}/evaluation/{config.evaluation.name}/manifest.json   the selected ensemble "
            f"({manifest['ensemble']['selected']})",
            f"  {run}/evaluation/{config.evaluation.name}/table*.md       member, RUEL-k and per-class tables; *.png figures",
        ]
    if "segment" in manifest:
        segment = manifest["segment"]
        where = segment["output"][len(out):].lstrip("/") if segment["output"].startswith(out) else segment["output"]
        lines += [
            f"  {where}/synthetic_slide/  labels.tif (pyramidal, class palette), uncertainty.tif, "
            "preview.png, summary.json (modal mineralogy, grain statistics)",
            f"  {where}/slides.csv        one row per slide; run_summary.json, failures.json",
            f"Segmented {segment['shape'][0]}x{segment['shape'][1]} px in {segment['seconds']:.0f} s; against the "
            f"slide's true mask: pixel accuracy {segment['truth']['pixel_accuracy']:.3f}, "
            f"mIoU {segment['truth']['miou']:.3f}",
        ]
    print("\n".join(lines))
    return manifest


def segment_synthetic_slide(config: MinsegConfig, manifest: dict) -> dict:
    """Segment the demo slide with the ensemble just selected, then score it against the slide's mask."""
    from minseg.inference.compare import compare_label_maps
    from minseg.inference.segment import segment_slides
    from minseg.synth.minerals import class_map_document

    slide = manifest["outputs"]["slide"]
    config.segment = config.segment.model_copy(update={"slides": [slide["image"]], "force": True})
    summary = segment_slides(config)
    if not summary["done"]:
        raise RuntimeError(f"the demo slide failed to segment: {summary['failed']}")
    done = summary["done"][0]
    labels_uri = join_uri(summary["output"], done["slide"], "labels.tif")
    names = [c["name"] for c in class_map_document()["classes"]]
    truth = compare_label_maps(labels_uri, slide["mask"], names, storage=Storage(config.storage))
    return {"output": summary["output"], "seconds": done["seconds"], "shape": [slide["height"], slide["width"]],
            "truth": {"pixel_accuracy": truth["accuracy"], "miou": truth["miou"]}}
