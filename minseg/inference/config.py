"""The ``segment`` config section: which slides, which ensemble, the actor pool, the outputs; and the
``measure`` section: which existing label maps to measure.

Tiling (tile, overlap, blend, scale), normalisation and fusion come from the ensemble
manifest, never from here: the ensemble is applied exactly as it was evaluated.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from minseg.config.base import Name, StrictModel, TiffTileSize
from minseg.data.config import SceneBitDepth
from minseg.enums import OutputFormat, Precision, PreviewFormat, TiffCompression, Uncertainty
from minseg.io.config import Uri
from minseg.io.storage import has_glob, output_folder
from minseg.mineralogy.config import MAX_PIXEL_SIZE_UM


class SlideLimitSettings(StrictModel):
    """What one slide may make a reader allocate, checked from its header before any pixel is decoded."""

    max_pixels: int = Field(25_000_000_000, ge=1, description="level-0 height x width (~158 000²); PNG/JPEG "
                            "slides, decoded whole, are also held to it")
    max_segment_mib: float = Field(256.0, gt=0, description="one stored tile or strip, decoded")

    def limits(self):
        from minseg.io.slides import SlideLimits

        return SlideLimits(self.max_pixels, int(self.max_segment_mib * 2**20), "segment.limits")


class SegmentSettings(StrictModel):
    manifest_uri: Uri | None = Field(
        None, description="ensemble manifest (default: the demo/run evaluation's manifest.json)")
    slides: list[Uri] = Field(default_factory=list, description="slide URIs or globs (local or s3://)")
    slide_list: Uri | None = Field(None, description="text file (one URI per line) or CSV with a 'uri' column")
    scenes: list[dict[str, Uri]] = Field(default_factory=list, description="for ensembles reading several images "
                                         "per scene (data.sources[].channels): one entry per scene, channel name -> "
                                         "image URI, e.g. {ppl: s3://lab/s01_ppl.tif, xpl: s3://lab/s01_xpl.tif}")
    output_uri: Uri | None = Field(None, description="default: <run.output_uri>/<run.name>/segment/<name>")
    name: Name = "slides"

    def output(self, run_uri: str) -> str:
        """The folder the slides' outputs go to: ``output_uri``, else ``<run>/segment/<name>``."""
        return output_folder(self.output_uri, run_uri, "segment", self.name)
    level: int = Field(0, ge=0, description="pyramid level to segment (0 = full resolution)")
    force: bool = Field(False, description="redo slides whose outputs exist for the same ensemble")

    actors: int = Field(1, ge=1, description="inference actors; each holds the whole ensemble")
    cpus_per_actor: float = Field(0.5, gt=0, description="fractional on small nodes: reads need CPUs too")
    gpus_per_actor: float = Field(0.0, ge=0, description="fractions share a GPU between actors (e.g. 0.25: four)")
    threads_per_actor: int | None = Field(None, ge=1, description="torch CPU threads per actor (default: its CPU "
                                          "share rounded up, so actors on one node do not oversubscribe it)")
    batch_size: int = Field(8, ge=1, description="tiles per forward pass (the last batch is padded to it)")
    gpu_memory_gib: float | None = Field(None, gt=0, description="on CUDA, pick the largest batch size whose "
                                         "measured peak memory fits this budget (batch_size is then the cap)")
    compile: bool = Field(False, description="torch.compile the members (CUDA: worth it for long batches)")
    precision: Precision = Field(Precision.AUTO, description="auto: bf16 autocast on GPUs that support it")
    read_cpus: float = Field(0.25, gt=0, description="CPUs per block-read task and per slide-finishing task")
    plan_threads: int = Field(16, ge=1, description="slides the driver opens (header) and prepares (metadata "
                              "writes) at once before the pipeline starts: I/O-bound, thousands of slides on S3")

    block: int = Field(4096, ge=16, description="output block side in processed pixels: one worker reads, "
                       "predicts, blends and writes a block (a multiple of output_tile; larger blocks recompute "
                       "less halo and send the driver fewer rows, smaller ones spread a slide over more workers; "
                       "bench/results/segment_throughput.csv)")
    blocks_per_task: int = Field(1, ge=1, description="blocks per read task and per actor call: Ray Data's "
                                 "per-task driver overhead (~1-15 ms) caps a run at ~25-150 tasks/s, so clusters "
                                 "finishing more blocks per second group them (docs/scaling.md); each task then "
                                 "holds that many blocks' windows")
    formats: list[OutputFormat] = Field(default_factory=lambda: [OutputFormat.ZARR],
                                        description="zarr is always written; tiff adds labels.tif / uncertainty.tif")
    include_image: bool = Field(True, description="write the segmented RGB image into the OME-Zarr too, so "
                                "viewers show labels over it (triples the zarr's size)")
    output_tile: TiffTileSize = Field(512, description="chunk size of the OME-Zarr and tile size of the TIFFs")
    compression: TiffCompression = Field(TiffCompression.ZSTD, description="the OME-Zarr's chunks")
    tiff_compression: TiffCompression = Field(
        TiffCompression.DEFLATE, description="labels.tif / uncertainty.tif (formats: tiff): deflate, which every TIFF "
        "reader decodes; zstd is smaller but ImageJ's own opener, Pillow and geotiff.js refuse it")
    uncertainty: Uncertainty = Uncertainty.AUTO
    preview_max_side: int = Field(2048, ge=64)
    preview_format: PreviewFormat = PreviewFormat.PNG
    preview_alpha: float = Field(0.55, ge=0, le=1, description="opacity of the class colours over the image")
    pixel_size_um: float | None = Field(None, gt=0, lt=MAX_PIXEL_SIZE_UM, allow_inf_nan=False,
                                        description="µm per pixel of the segmented "
                                        "level; default: the slide's resolution tags, if any")
    bit_depth: SceneBitDepth | None = Field(
        None, description="significant bits of slides stored with 16 bits per sample (12: a 12-bit camera), for "
        "every image of a scene, or {name: bits} for some (the others as the ensemble's); default: the ensemble's "
        "(data.bit_depth or channels[].bit_depth of its training images, the same camera). Set it for slides from "
        "another camera")
    limits: SlideLimitSettings = SlideLimitSettings()

    @model_validator(mode="before")
    @classmethod
    def _moved_to_mineralogy(cls, data):
        moved = sorted(set(data) & {"connectivity", "min_grain_px", "background_classes", "densities"}) \
            if isinstance(data, dict) else []
        if moved:
            raise ValueError(f"{', '.join('segment.' + k for k in moved)} moved to the mineralogy section "
                             f"({', '.join('mineralogy.' + k for k in moved)}), shared with minseg measure")
        return data

    @field_validator("formats")
    @classmethod
    def _zarr_always(cls, value: list[OutputFormat]) -> list[OutputFormat]:
        return [OutputFormat.ZARR] + [f for f in dict.fromkeys(value) if f is not OutputFormat.ZARR]

    @model_validator(mode="after")
    def _lossless_labels(self) -> "SegmentSettings":
        for key in ("compression", "tiff_compression"):
            if getattr(self, key) is TiffCompression.JPEG:
                raise ValueError(f"{key}: jpeg is lossy and would corrupt class ids; use zstd, deflate or none")
        if self.block % self.output_tile:
            raise ValueError(f"block: {self.block} is not a multiple of output_tile ({self.output_tile})")
        return self


class MeasureSettings(StrictModel):
    """The ``measure`` section: mineralogy of label maps that exist already (``minseg measure``)."""

    labels: list[Uri] = Field(default_factory=list, description="label maps: labels.tif or segmentation.ome.zarr "
                              "from segment, or any single-channel class-id TIFF/PNG (paths, s3:// URIs, globs)")
    references: list[Uri] = Field(default_factory=list, description="reference masks (class ids, same classes and "
                                  "size), one per label map in the same order: errors of every number against them")
    classes: list[str] | None = Field(None, description="class names by id, for label maps that do not carry them "
                                      "(labels.tif and OME-Zarr from segment do)")
    pixel_size_um: float | None = Field(None, gt=0, lt=MAX_PIXEL_SIZE_UM, allow_inf_nan=False,
                                        description="µm per pixel (default: the label map's own)")
    output_uri: Uri | None = Field(None, description="default: <run.output_uri>/<run.name>/measure/<name>")
    name: Name = "labels"

    def output(self, run_uri: str) -> str:
        """The folder the label maps' outputs go to: ``output_uri``, else ``<run>/measure/<name>``."""
        return output_folder(self.output_uri, run_uri, "measure", self.name)
    block: int = Field(4096, ge=16, description="block side in pixels: what one label map holds in memory at "
                       "once besides its objects crossing blocks")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs per label-map task (one task per map)")

    @model_validator(mode="after")
    def _paired_references(self) -> "MeasureSettings":
        # a glob first: a count of entries, one of them a pattern, is not a count of maps
        if self.references and any(has_glob(uri) for uri in self.labels):
            raise ValueError("references pair with label maps one by one: list the label maps, no globs")
        if self.references and len(self.references) != len(self.labels):
            raise ValueError(f"references: {len(self.references)} given for {len(self.labels)} label maps; give "
                             "one per label map, in the same order (or none)")
        return self
