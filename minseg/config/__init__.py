"""Typed, validated configuration.

``config.base`` holds the machinery (strict models, overrides, error reporting) and sits
below every other package; each section model lives beside the code it configures
(``minseg.io.config``, ``minseg.data.config``, ``minseg.train.config`` ...);
``config.schema`` alone assembles the root, and ``config.loading`` reads files through
the storage layer. Names from the last two are imported on first use, so importing
``minseg.config`` never loads the whole stack.
"""

from minseg.config.base import (ConfigError, StrictModel, parse_set_options, section_error, validate_config,
                                validate_section)

_LAZY = {
    "MinsegConfig": "minseg.config.schema",
    "RunSettings": "minseg.config.schema",
    "load_config": "minseg.config.loading",
    "StorageSettings": "minseg.io.config",
    "RaySettings": "minseg.runtime",
    "SynthSettings": "minseg.synth.config",
    "SectionsSynth": "minseg.synth.config",
    "SlideSynth": "minseg.synth.config",
    "SurveySynth": "minseg.synth.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minseg.config' has no attribute {name!r}")


__all__ = ["ConfigError", "StrictModel", "parse_set_options", "section_error", "validate_config", "validate_section",
           *sorted(_LAZY)]
