"""Class-id label maps as ``measure`` and the scoring read them, a region at a time: a segmentation OME-Zarr
(level 0 of its ``labels/classes``), or a single-channel TIFF / PNG of class ids (``labels.tif`` from segment,
a reference mask). What the file says about its classes and pixel size comes along."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minseg.errors import InputError
from minseg.io.slides import Slide, SlideError, usable_pixel_size
from minseg.io.storage import ObjectNotFoundError, Storage


@dataclass
class LabelMap:
    """An open label map.

    Attributes:
        uri: where it is.
        height, width: pixels.
        names: class names by id when the file carries them (segment's outputs do), else None.
        colours: RGB per class when the file carries them, else None.
        pixel_size_um: µm per pixel when the file says, else None.
    """

    uri: str
    height: int
    width: int
    names: list[str] | None = None
    colours: list[list[int]] | None = None
    pixel_size_um: float | None = None
    _read: object = field(default=None, repr=False)
    _close: object = field(default=None, repr=False)

    def read(self, top: int, left: int, rows: int, cols: int) -> np.ndarray:
        """(rows, cols) uint8 class ids.

        Raises:
            InputError: the map is not one channel of class ids.
        """
        region = np.asarray(self._read(top, left, rows, cols))
        if region.ndim != 2:
            raise InputError(f"{self.uri}: not a label map of class ids (one channel): it holds colour or alpha "
                             "channels (convert a colour mask to class ids first; save a grey mask without its alpha "
                             "channel)")
        if region.dtype != np.uint8:
            if not (np.issubdtype(region.dtype, np.integer) or region.dtype == np.bool_):
                raise InputError(f"{self.uri}: class ids must be integers, the map holds {region.dtype} values")
            if region.size and (region.min() < 0 or region.max() > 255):
                raise InputError(f"{self.uri}: class ids must be 0-255, found {region.min()}..{region.max()}")
            region = region.astype(np.uint8)
        return region

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> "LabelMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def class_names_difference(names: list[str], other: list[str], own: str, source: str) -> str | None:
    """None when two label maps' class lists (``names`` of ``own``, ``other`` of ``source``) number the same classes
    (case aside: the mineralogy matches names in any case); else the first id they name differently, or their
    lengths. Label maps are compared id by id, so any difference makes every number wrong."""
    if [n.casefold() for n in names] == [n.casefold() for n in other]:
        return None
    for class_id, (mine, theirs) in enumerate(zip(names, other)):
        if mine.casefold() != theirs.casefold():
            return f"class id {class_id} is {mine!r} in {own}, {theirs!r} in {source}"
    return f"{own} names {len(names)} classes ({', '.join(names)}), {source} {len(other)}"


def open_label_map(uri: str, storage: Storage) -> LabelMap:
    """Open a label map (``.zarr`` folder, or anything the slide readers open).

    Raises:
        SlideError: missing, unreadable or not an image.
    """
    if uri.rstrip("/").endswith(".zarr"):
        return _open_zarr(uri.rstrip("/"), storage)
    slide = Slide(uri, storage)
    if slide.info.lossy:
        slide.close()
        raise SlideError(f"{uri}: a label map stored with lossy compression ({slide.info.format}, JPEG): it "
                         "changes class ids along every edge, so areas, sizes and liberation would be of classes "
                         "nobody drew; save label maps and masks as PNG or a TIFF with lossless compression")
    try:
        metadata = _tiff_metadata(uri, storage) if uri.lower().endswith((".tif", ".tiff")) else {}
        classes = metadata.get("classes") if isinstance(metadata.get("classes"), list) else None
        named = classes and all(isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] for c in classes)
        names = [c["name"] for c in classes] if named else None  # a list with gaps names nothing reliably
        colours = [c.get("color") for c in classes] if names and all(c.get("color") for c in classes) else None
        size = slide.info.pixel_size_um or usable_pixel_size(metadata.get("pixel_size_um"))
        return LabelMap(uri, slide.info.height, slide.info.width, names, colours, size,
                        lambda top, left, rows, cols: slide.read_region(top, left, rows, cols, rgb=False), slide.close)
    except BaseException:
        slide.close()
        raise


def _tiff_metadata(uri: str, storage: Storage) -> dict:
    from minseg.io.tiff import read_metadata

    try:
        with storage.open_read(uri) as stream:
            return read_metadata(stream)
    except Exception:  # metadata is a bonus: an unreadable description is no metadata (the pixels decide)
        return {}


def _open_zarr(uri: str, storage: Storage) -> LabelMap:
    from minseg.io.ngff import SegmentationArrays

    try:
        arrays = SegmentationArrays(uri, storage, read_only=True)
        level = arrays.array(arrays.LABELS, 0)
        attributes = dict(arrays.root["labels/classes"].attrs)
    except (ObjectNotFoundError, FileNotFoundError, KeyError) as exc:
        raise SlideError(f"{uri}: not a segmentation OME-Zarr with labels/classes ({exc})") from None
    except Exception as exc:  # zarr raises its own errors for a folder that is no zarr
        raise SlideError(f"{uri}: cannot open as OME-Zarr: {exc}") from None
    try:
        names, colours, size = _zarr_metadata(attributes)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise SlideError(f"{uri}: unreadable OME-Zarr label metadata ({type(exc).__name__}: {exc})") from None
    if len(level.shape) != 2:
        raise SlideError(f"{uri}: labels/classes/0 has shape {tuple(level.shape)}, not (height, width)")
    height, width = level.shape

    def read(top: int, left: int, rows: int, cols: int) -> np.ndarray:
        try:
            return arrays.read(arrays.LABELS, 0, top, top + rows, left, left + cols)
        except Exception as exc:  # a missing or corrupt chunk: zarr and codecs raise many kinds
            raise SlideError(f"{uri}: rows {top}-{top + rows}, columns {left}-{left + cols} unreadable "
                             f"({type(exc).__name__}: {exc})") from None

    return LabelMap(uri, int(height), int(width), names, colours, size, read)


def _zarr_metadata(attributes: dict) -> tuple[list[str] | None, list | None, float | None]:
    """Class names, colours and pixel size (µm) from a labels group's attributes (NGFF image-label and
    multiscales); None for what it does not say."""
    ome = attributes.get("ome", {})
    label = ome.get("image-label", {})
    properties = sorted(label.get("properties", []), key=lambda p: p.get("label-value", 0))
    names = ([p["class"] for p in properties] if properties and all(isinstance(p.get("class"), str) and p["class"]
                                                                     for p in properties) else None)
    colours = [c["rgba"][:3] for c in sorted(label.get("colors", []), key=lambda c: c.get("label-value", 0))] or None
    size = None
    multiscales = ome.get("multiscales") or [{}]
    if any(a.get("unit") == "micrometer" for a in multiscales[0].get("axes", [])):
        size = usable_pixel_size(multiscales[0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1])
    return names, colours, size

