"""Typed, validated configuration. Section models live beside the code they configure
(``minseg.data.config``, ``minseg.train.config``); ``schema`` assembles the root."""

from minseg.config.base import (
    ConfigError,
    StrictModel,
    load_config,
    parse_set_options,
    validate_config,
)

_SCHEMA_NAMES = {
    "MinsegConfig",
    "RaySettings",
    "RunSettings",
    "SectionsSynth",
    "SlideSynth",
    "StorageSettings",
    "SurveySynth",
    "SynthSettings",
}


def __getattr__(name: str):
    # lazy: section modules import minseg.config.base, and the schema imports them
    if name in _SCHEMA_NAMES:
        from minseg.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'minseg.config' has no attribute {name!r}")


__all__ = ["ConfigError", "StrictModel", "load_config", "parse_set_options", "validate_config", *sorted(_SCHEMA_NAMES)]
