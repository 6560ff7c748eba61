"""The ``storage`` config section: how minseg talks to object storage.

It lives beside the storage layer it configures (``config/schema.py`` only assembles the
root), so reading and writing never depends on any job's settings.
"""

from __future__ import annotations

import os
from typing import Annotated, Mapping

from pydantic import AfterValidator, Field, field_validator

from minseg.config.base import ENV_PREFIX, PositiveInt, StrictModel, validate_config
from minseg.enums import AddressingStyle

MIB = 1024 * 1024
S3_MIN_PART_MIB = 5  # S3 rejects non-final multipart parts under 5 MiB


def _location(value: str) -> str:
    from minseg.io.storage import StorageError, parse_uri  # here: io.storage imports this module

    if value and not value.strip():
        raise ValueError("a blank path or URI")
    try:
        parse_uri(value)
    except StorageError as exc:
        raise ValueError(str(exc)) from None
    return value


Uri = Annotated[str, AfterValidator(_location)]
"""A local path, ``file://`` or ``s3://`` URI (``io.storage.parse_uri``): an empty one, another scheme
(``ftp://``), an S3 URI without a bucket or with credentials in it are refused when the config is read, not when
the job first touches them."""


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
    # bounded: a request to an endpoint that accepts and never answers waits read_timeout_s per try, silently
    max_attempts: PositiveInt = Field(8, le=50, description="tries per request, with backoff on throttling / 5xx")
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(60.0, gt=0, le=3600)
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

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "StorageSettings":
        """Defaults with ``MINSEG__STORAGE__*`` environment overrides applied (what a bare ``Storage()`` uses).

        Raises:
            ConfigError: such a variable does not validate (named as ``storage.<key>``).
        """
        environ = os.environ if environ is None else environ
        prefix = f"{ENV_PREFIX}STORAGE__"
        own = {name: value for name, value in environ.items() if name.startswith(prefix)}
        return validate_config({}, _StorageRoot, source="environment", environ=own).storage


class _StorageRoot(StrictModel):
    """Just the ``storage`` section, so errors name keys as in a full config (``storage.max_attempts``)."""

    storage: StorageSettings = StorageSettings()
