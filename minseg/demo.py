"""The embedded-default demo: what README's main command runs.

Until the segmentation job lands, the demo exercises the foundation end to end on a
local Ray instance: synthetic training sections (Ray Data tasks), a whole-slide
BigTIFF streamed tile by tile, and a geochemical survey, all written through the
storage layer to ``run.output_uri`` (a local folder by default, or ``s3://``).
"""

from __future__ import annotations

import json
import time

from minseg.config.schema import MinsegConfig
from minseg.io.storage import Storage, join_uri
from minseg.logs import get_logger, log_event
from minseg.runtime import init_ray
from minseg.synth.dataset import write_section_dataset
from minseg.synth.slide import write_synthetic_slide
from minseg.synth.survey import write_survey

log = get_logger("demo")


def run_synth(config: MinsegConfig, output_uri: str | None = None) -> dict:
    """Write every synthetic product the config asks for under ``output_uri``."""
    storage = Storage(config.storage)
    output_uri = output_uri or config.run.output_uri
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


def run_demo(config: MinsegConfig) -> dict:
    manifest = run_synth(config)
    out = manifest["output"]
    lines = [
        "",
        f"minseg demo finished in {manifest['seconds']} s. Outputs under {out}:",
        f"  {join_uri(out, 'sections')}/images, /masks   synthetic training photos + label masks",
        f"  {join_uri(out, 'slides')}/                    whole-slide pyramidal BigTIFF + mask",
        f"  {join_uri(out, 'survey')}/                    geochemical survey (CSV/Parquet, GeoTIFF, GeoJSON)",
        f"  {join_uri(out, 'synth_manifest.json')}       what was made, with the resolved config",
    ]
    print("\n".join(lines))
    return manifest
