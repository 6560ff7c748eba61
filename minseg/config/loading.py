"""Reading config files (local paths or ``s3://`` URIs) into validated sections.

Separate from ``config.base`` because it reads through the storage layer, which itself
is configured by a section built on ``config.base``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, TypeVar

from pydantic import BaseModel

from minseg.config.base import ConfigError, parse_yaml, validate_config
from minseg.io.storage import ObjectNotFoundError, Storage

M = TypeVar("M", bound=BaseModel)


def load_config(
    source: str | Path,
    model: type[M],
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping | None = None,
) -> M:
    """Read a YAML config from a path or URI (``s3://`` too) and validate it (``validate_config``)."""
    source = str(source)
    try:
        text = Storage().read_bytes(source).decode("utf-8")
    except ObjectNotFoundError:
        raise ConfigError(source, [("", "config file not found")]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [("", "config file is not UTF-8 text")]) from None
    return validate_config(parse_yaml(text, source), model, source, overrides, environ, defaults)
