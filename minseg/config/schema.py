"""The root of every config file: the one place that assembles the sections.

Each section is defined beside the code it configures; only ``RunSettings`` (the run's
name, output and seed, which every job shares) lives here.
"""

from __future__ import annotations

from pydantic import Field

from minseg.config.base import Name, Seed, StrictModel
from minseg.data.config import DataSettings
from minseg.ensemble.config import EvaluationSettings, ScoreSettings
from minseg.geo.config import ProspectSettings
from minseg.inference.config import MeasureSettings, SegmentSettings
from minseg.io.config import StorageSettings, Uri
from minseg.io.storage import absolute_uri, join_uri
from minseg.mineralogy.config import MineralogySettings
from minseg.runtime import RaySettings
from minseg.synth.config import SynthSettings
from minseg.train.config import TrainingSettings


class RunSettings(StrictModel):
    name: Name = "minseg-run"
    output_uri: Uri = Field("outputs", description="local folder or s3://bucket/prefix for this run's outputs")
    seed: Seed = 0

    @property
    def uri(self) -> str:
        """Where this run's outputs go: ``output_uri/name``, absolute."""
        return join_uri(absolute_uri(self.output_uri), self.name)


class MinsegConfig(StrictModel):
    """Root of every minseg config file."""

    run: RunSettings = RunSettings()
    ray: RaySettings = RaySettings()
    storage: StorageSettings = StorageSettings()
    synth: SynthSettings = Field(default_factory=SynthSettings)  # built when used: the survey CRS check runs PROJ
    data: DataSettings | None = None
    training: TrainingSettings | None = None
    evaluation: EvaluationSettings | None = None
    score: ScoreSettings | None = None
    segment: SegmentSettings | None = None
    mineralogy: MineralogySettings = MineralogySettings()  # how segment and measure measure label maps
    measure: MeasureSettings | None = None
    prospect: ProspectSettings | None = None
