"""String options, validated in one place (configs and CLI both use these)."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def choices(cls) -> list[str]:
        return [member.value for member in cls]


class AddressingStyle(StrEnum):
    AUTO = "auto"
    PATH = "path"  # MinIO / Ceph and most self-hosted stores
    VIRTUAL = "virtual"


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpg"
    TIFF = "tif"


class TiffCompression(StrEnum):
    NONE = "none"
    DEFLATE = "deflate"
    ZSTD = "zstd"
    JPEG = "jpeg"  # lossy: images only, never label masks
