"""Segmentation outputs as OME-Zarr (NGFF 0.5 on zarr v3), local or on S3, written block by block.

Layout of one slide's ``segmentation.ome.zarr`` (https://ngff.openmicroscopy.org/0.5/):

    zarr.json                  the image group: ``ome.multiscales`` of the segmented RGB image (when
                               written), ``ome.omero`` channel rendering, and ``minseg`` (run facts and
                               ``status``: "incomplete" until the slide's last write says "complete")
    0/ 1/ ...                  (c=3, y, x) uint8 image levels (``include_image``)
    labels/zarr.json           ``ome.labels``: ["classes"]
    labels/classes/            NGFF label image: (y, x) uint8 class ids per level, ``image-label`` with
                               each class's colour and name
    uncertainty/               (y, x) uint8 uncertainty per level (0..255 = none..maximal), a multiscale
                               image of its own

Level l is level 0 halved l times (odd edges repeat their last row/column, as in the TIFF
pyramids: ``io.tiff.halve``), chunked ``chunk`` x ``chunk``; scale transforms are in µm when the
pixel size is known, else in pixels. Chunks never straddle blocks (blocks are multiples of the
chunk on every level a block writes), so workers write in parallel without locks.

S3 goes through ``obstore`` (zarr's ``ObjectStore``) configured from ``StorageSettings`` and the
same boto3 credential chain as the rest of minseg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from minseg.enums import AddressingStyle, TiffCompression
from minseg.io.storage import Storage, parse_uri

NGFF_VERSION = "0.5"
IMAGE_CHANNELS = ("red", "green", "blue")


@dataclass(frozen=True)
class PyramidLayout:
    """Level shapes of a (height, width) pyramid with ``chunk``-square chunks and ``levels`` levels
    (default: halve until the top level fits in one chunk, as ``io.tiff.PyramidSpec`` does)."""

    height: int
    width: int
    chunk: int
    levels: int = 0

    def __post_init__(self):
        if self.levels <= 0:
            object.__setattr__(self, "levels",
                               1 + max(0, math.ceil(math.log2(max(self.height, self.width) / self.chunk))))

    def level_shape(self, level: int) -> tuple[int, int]:
        height, width = self.height, self.width
        for _ in range(level):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        return height, width


def zarr_store(uri: str, storage: Storage, read_only: bool = False):
    """A zarr v3 store rooted at ``uri`` (a local folder or ``s3://bucket/prefix``)."""
    import zarr.storage

    location = parse_uri(uri)
    if not location.is_s3:
        return zarr.storage.LocalStore(location.path, read_only=read_only)
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    settings = storage.settings
    endpoint = storage.endpoint_url
    config = {"region": settings.region}
    if endpoint:
        config["endpoint"] = endpoint
    # path-style unless asked otherwise: what S3-compatible stores want, and AWS still serves it
    config["virtual_hosted_style_request"] = settings.addressing_style is AddressingStyle.VIRTUAL
    client_options = {"timeout": f"{settings.read_timeout_s}s", "connect_timeout": f"{settings.connect_timeout_s}s",
                      "allow_http": bool(endpoint and endpoint.startswith("http://")),
                      "allow_invalid_certificates": not settings.verify_tls}
    store = S3Store(location.bucket, prefix=location.path.strip("/"), config=config, client_options=client_options,
                    retry_config={"max_retries": settings.max_attempts - 1},
                    credential_provider=Boto3CredentialProvider(storage._session()))
    return zarr.storage.ObjectStore(store, read_only=read_only)


def _compressors(compression: TiffCompression):
    from zarr.codecs import GzipCodec, ZstdCodec

    if compression is TiffCompression.ZSTD:
        return [ZstdCodec(level=3)]
    if compression is TiffCompression.DEFLATE:
        return [GzipCodec(level=6)]
    if compression is TiffCompression.NONE:
        return None
    raise ValueError(f"{compression} is lossy: not for label maps")


def _multiscales(name: str, layout: PyramidLayout, pixel_size_um: float | None, channel: bool,
                 method: str) -> dict:
    space = {"type": "space", **({"unit": "micrometer"} if pixel_size_um else {})}
    axes = ([{"name": "c", "type": "channel"}] if channel else []) + \
        [{"name": "y", **space}, {"name": "x", **space}]
    size = pixel_size_um or 1.0
    datasets = [{"path": str(level), "coordinateTransformations": [
        {"type": "scale", "scale": ([1.0] if channel else []) + [size * 2**level, size * 2**level]}]}
        for level in range(layout.levels)]
    return {"name": name, "axes": axes, "datasets": datasets, "type": method,
            "metadata": {"method": "minseg.io.tiff.halve", "reduce": method}}


def _create_levels(store, group: str, layout: PyramidLayout, channels: int, compression: TiffCompression) -> None:
    import zarr

    for level in range(layout.levels):
        height, width = layout.level_shape(level)
        shape, chunks = (height, width), (layout.chunk, layout.chunk)
        names = ["y", "x"]
        if channels:
            shape, chunks, names = (channels,) + shape, (channels,) + chunks, ["c"] + names
        zarr.create_array(store, name=f"{group}/{level}".lstrip("/"), shape=shape, chunks=chunks, dtype="uint8",
                          fill_value=0, compressors=_compressors(compression), dimension_names=names,
                          overwrite=True)


def create_segmentation(uri: str, storage: Storage, layout: PyramidLayout, class_names: Sequence[str],
                        colours: np.ndarray, pixel_size_um: float | None, include_image: bool,
                        compression: TiffCompression, attributes: dict) -> None:
    """Create the empty OME-Zarr (metadata and array definitions only: no chunk is written).

    ``attributes`` go under the root's ``minseg`` key with ``status: incomplete`` and ``every_chunk: true``
    (``SegmentationArrays`` stores all-background chunks too: ``missing_chunks``).
    """
    import zarr

    store = zarr_store(uri, storage)
    root = zarr.create_group(store, overwrite=True)
    ome: dict = {"version": NGFF_VERSION}
    if include_image:
        ome["multiscales"] = [_multiscales("image", layout, pixel_size_um, True, "mean")]
        ome["omero"] = {"channels": [{"label": name, "color": colour, "active": True, "coefficient": 1.0,
                                      "family": "linear", "inverted": False,
                                      "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                                     for name, colour in zip(IMAGE_CHANNELS, ("FF0000", "00FF00", "0000FF"))],
                        "rdefs": {"model": "color"}}
        _create_levels(store, "", layout, 3, compression)
    root.attrs.update({"ome": ome, "minseg": {**attributes, "status": "incomplete", "every_chunk": True}})
    labels = root.create_group("labels")
    labels.attrs.update({"ome": {"version": NGFF_VERSION, "labels": ["classes"]}})
    classes = labels.create_group("classes")
    classes.attrs.update({"ome": {
        "version": NGFF_VERSION,
        "multiscales": [_multiscales("classes", layout, pixel_size_um, False, "nearest")],
        "image-label": {
            "colors": [{"label-value": i, "rgba": [int(v) for v in colours[i]] + [255]} for i in range(len(class_names))],
            "properties": [{"label-value": i, "class": name} for i, name in enumerate(class_names)],
            "source": {"image": "../../"},
        },
    }})
    _create_levels(store, "labels/classes", layout, 0, compression)
    uncertainty = root.create_group("uncertainty")
    uncertainty.attrs.update({"ome": {"version": NGFF_VERSION, "multiscales": [
        _multiscales("uncertainty", layout, pixel_size_um, False, "mean")]}})
    _create_levels(store, "uncertainty", layout, 0, compression)


class SegmentationArrays:
    """The level arrays of an existing segmentation OME-Zarr, opened once (per worker) for block writes."""

    LABELS, UNCERTAINTY = "labels/classes", "uncertainty"

    def __init__(self, uri: str, storage: Storage, read_only: bool = False):
        import zarr

        self.uri = uri
        self.store = zarr_store(uri, storage, read_only=read_only)
        self.root = zarr.open_group(self.store, mode="r" if read_only else "r+")
        self.has_image = "multiscales" in self.root.attrs.get("ome", {})
        self._arrays: dict[str, object] = {}

    def array(self, group: str, level: int):
        key = f"{group}/{level}".lstrip("/")
        if key not in self._arrays:
            import zarr

            array = zarr.open_array(self.store, path=key, mode="r" if self.store.read_only else "r+")
            # every chunk written, all-background ones too: a chunk missing from a complete map is then damage,
            # which a reader can tell (zarr reads a missing chunk as the fill value, 0, without a word)
            self._arrays[key] = array if self.store.read_only else array.with_config({"write_empty_chunks": True})
        return self._arrays[key]

    def missing_chunks(self, group: str = LABELS, level: int = 0) -> tuple[int, int] | None:
        """(chunks missing, chunks) of a level written with every chunk stored (``every_chunk`` in the root's
        ``minseg`` attributes: segment since 2026-12-05), or None when the writer did not store empty ones."""
        if not self.root.attrs.get("minseg", {}).get("every_chunk"):
            return None
        array = self.array(group, level)
        return array.nchunks - array.nchunks_initialized, array.nchunks

    def write(self, group: str, level: int, top: int, left: int, values: np.ndarray) -> None:
        """``values`` ((h, w) or (h, w, c): channels last, as images come) at (top, left) of a level."""
        array = self.array(group, level)
        if values.ndim == 3:
            array[:, top : top + values.shape[0], left : left + values.shape[1]] = np.moveaxis(values, -1, 0)
        else:
            array[top : top + values.shape[0], left : left + values.shape[1]] = values

    def read(self, group: str, level: int, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """(h, w) or (h, w, c) uint8 of a level (channels last)."""
        array = self.array(group, level)
        if array.ndim == 3:
            return np.moveaxis(np.asarray(array[:, top:bottom, left:right]), 0, -1)
        return np.asarray(array[top:bottom, left:right])

    def mark(self, status: str, **facts) -> None:
        """Rewrite the root's ``minseg`` attributes with ``status`` (one small metadata write)."""
        attributes = dict(self.root.attrs.get("minseg", {}))
        attributes.update(facts, status=status)
        self.root.attrs.update({"minseg": attributes})

    @property
    def status(self) -> str | None:
        return self.root.attrs.get("minseg", {}).get("status")
