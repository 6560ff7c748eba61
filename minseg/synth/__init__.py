"""Deterministic synthetic data: polished sections, whole slides and a geochemical survey."""

from minseg.synth.dataset import write_section_dataset
from minseg.synth.minerals import CLASS_NAMES, MINERALS, PALETTE
from minseg.synth.sections import SectionRenderer, render_section
from minseg.synth.slide import write_synthetic_slide
from minseg.synth.survey import generate_survey, write_survey

__all__ = [
    "CLASS_NAMES",
    "MINERALS",
    "PALETTE",
    "SectionRenderer",
    "generate_survey",
    "render_section",
    "write_section_dataset",
    "write_survey",
    "write_synthetic_slide",
]
