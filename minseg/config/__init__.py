from minseg.config.base import (
    ConfigError,
    StrictModel,
    load_config,
    parse_set_options,
    validate_config,
)
from minseg.config.schema import (
    MinsegConfig,
    RaySettings,
    RunSettings,
    SectionsSynth,
    SlideSynth,
    StorageSettings,
    SurveySynth,
    SynthSettings,
)

__all__ = [
    "ConfigError",
    "MinsegConfig",
    "RaySettings",
    "RunSettings",
    "SectionsSynth",
    "SlideSynth",
    "StorageSettings",
    "StrictModel",
    "SurveySynth",
    "SynthSettings",
    "load_config",
    "parse_set_options",
    "validate_config",
]
