"""Config sections shared by every job. Later jobs add their own sections here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from minseg.config.base import StrictModel, TiffTileSize
from minseg.data.config import DataSettings
from minseg.ensemble.config import EvaluationSettings
from minseg.geo.config import ProspectSettings
from minseg.inference.config import SegmentSettings
from minseg.train.config import TrainingSettings
from minseg.enums import AddressingStyle, ImageFormat, TiffCompression

MIB = 1024 * 1024
S3_MIN_PART_MIB = 5  # S3 rejects non-final multipart parts under 5 MiB

PositiveInt = Annotated[int, Field(gt=0)]


class StorageSettings(StrictModel):
    """Object storage. Credentials come only from the environment (AWS_* or a profile)."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, ...); else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
    )
    region: str = "us-east-1"
    profile: str | None = Field(None, description="named AWS profile (not a secret itself)")
    addressing_style: AddressingStyle = AddressingStyle.AUTO
    multipart_threshold_mib: float = Field(16.0, ge=S3_MIN_PART_MIB)
    multipart_part_size_mib: float = Field(16.0, ge=S3_MIN_PART_MIB)
    max_attempts: PositiveInt = Field(8, description="tries per request, with backoff on throttling / 5xx")
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    verify_tls: bool = True
    forward_credentials: bool = Field(
        False, description="hand the driver's AWS_* credentials to the job's Ray tasks (for nodes without their "
        "own IAM role or environment; Ray's runtime env shows them to cluster admins)")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @property
    def multipart_threshold(self) -> int:
        return int(self.multipart_threshold_mib * MIB)

    @property
    def part_size(self) -> int:
        return int(self.multipart_part_size_mib * MIB)


class RunSettings(StrictModel):
    name: str = Field("minseg-run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output_uri: str = Field("outputs", description="local folder or s3://bucket/prefix for this run's outputs")
    seed: int = 0

    @property
    def uri(self) -> str:
        """Where this run's outputs go: ``output_uri/name``, absolute."""
        from minseg.io.storage import absolute_uri, join_uri

        return join_uri(absolute_uri(self.output_uri), self.name)


class RaySettings(StrictModel):
    address: str | None = Field(None, description="cluster address; default RAY_ADDRESS or a local instance")
    num_cpus: PositiveInt | None = Field(None, description="CPUs for a local instance (default: all)")
    task_cpus: float = Field(0.5, gt=0, description="CPUs per data task; fractional leaves headroom on small nodes")
    object_store_mib: int | None = Field(None, ge=80, description="object store size of a local instance (default: "
                                         "Ray's, 30 % of RAM); every process that reads results maps its pages")


class SectionsSynth(StrictModel):
    count: PositiveInt = 8
    height: PositiveInt = 512
    width: PositiveInt = 512
    image_format: ImageFormat = ImageFormat.PNG
    grain_scale: float = Field(1.0, gt=0, description="multiplies every grain radius")


class SlideSynth(StrictModel):
    height: PositiveInt = 8000
    width: PositiveInt = 8000
    tile: TiffTileSize = 512
    compression: TiffCompression = TiffCompression.JPEG
    levels: PositiveInt | None = Field(None, description="pyramid levels; default until the top fits one tile")
    grain_scale: float = Field(1.0, gt=0)


class SurveySynth(StrictModel):
    n_samples: PositiveInt = 2000
    width_m: float = Field(60_000.0, gt=0)
    height_m: float = Field(60_000.0, gt=0)
    cell_m: float = Field(250.0, gt=0, description="pixel size of the lithology raster")
    origin_x: float = 350_000.0
    origin_y: float = 7_450_000.0
    crs: str = "EPSG:3067"
    n_deposits: PositiveInt = 12
    n_faults: PositiveInt = 25
    n_rock_units: PositiveInt = 6
    censored_share: float = Field(0.3, ge=0, le=1, description="share of an element's lowest values reported as <DL")
    missing_share: float = Field(0.01, ge=0, le=1)


class SynthSettings(StrictModel):
    seed: int = 0
    sections: SectionsSynth | None = SectionsSynth()
    slide: SlideSynth | None = None
    survey: SurveySynth | None = SurveySynth()

    @model_validator(mode="after")
    def _something_to_make(self) -> "SynthSettings":
        if self.sections is None and self.slide is None and self.survey is None:
            raise ValueError("nothing to synthesise: set at least one of sections, slide, survey")
        return self


class MinsegConfig(StrictModel):
    """Root of every minseg config file."""

    run: RunSettings = RunSettings()
    ray: RaySettings = RaySettings()
    storage: StorageSettings = StorageSettings()
    synth: SynthSettings = SynthSettings()
    data: DataSettings | None = None
    training: TrainingSettings | None = None
    evaluation: EvaluationSettings | None = None
    segment: SegmentSettings | None = None
    prospect: ProspectSettings | None = None
