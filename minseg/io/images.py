"""Decoding picture files (JPEG / PNG / TIFF / BMP) into arrays: images and code masks.

Below ``data`` and ``io.slides``, which both decode pictures; errors are
:class:`DecodeError`, an input error naming what is wrong with the file.

Pixels come out **as a viewer shows them**: the EXIF / TIFF Orientation is applied (a
mask drawn on the picture as displayed lies on the same pixels), and TIFF samples are
converted by their PhotometricInterpretation (MinIsWhite inverted, palettes looked up)
and scaled by their BitsPerSample (12-bit data in 16-bit words is not 16× too dark), or by a
bit depth the user gives (``data.bit_depth``: a 12-bit camera's frames saved with 16 bits per sample).
What cannot be shown faithfully (CMYK, CIE L*a*b*, float or signed samples, …) is refused
naming the TIFF tag, never returned as if it were valid. docs/inputs.md lists the cases.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from minseg.errors import InputError


TIFF_SUFFIXES = (".tif", ".tiff")


class DecodeError(InputError):
    """A file that cannot be used; the message says why."""


class SampleAboveBitDepth(DecodeError):
    """A sample above the largest value of the bit depth it is read with (``scale_to_uint8``): the file's samples
    are not of that depth. ``y``, ``x``: where, in the array read (``at`` moves it to a slide's coordinates at its
    pyramid ``level``)."""

    def __init__(self, peak: int, bits: int, y: int, x: int, level: int = 0):
        self.peak, self.bits, self.y, self.x, self.level = peak, bits, y, x, level
        where = f"x={x}, y={y}" + (f" of pyramid level {level}" if level else "")
        super().__init__(f"a sample of {peak} (at {where}) is above {(1 << bits) - 1}, the largest {bits}-bit "
                         f"value: its samples are not {bits}-bit (the bit depth: data.bit_depth, or "
                         "data.sources[].channels[].bit_depth for one image of a scene; for segment "
                         "segment.bit_depth (--bit-depth, NAME=BITS for one image) or the ensemble's, for score the "
                         "ensemble's unless data.bit_depth is set); set the one its camera records, 16 for samples "
                         "over the whole 16-bit range")

    def __reduce__(self):  # raised in Ray tasks and actors: it crosses processes by pickle
        return type(self), (self.peak, self.bits, self.y, self.x, self.level)

    def at(self, top: int, left: int, level: int = 0) -> "SampleAboveBitDepth":
        """The same refusal for an array read at (``top``, ``left``) of pyramid ``level``."""
        return SampleAboveBitDepth(self.peak, self.bits, self.y + top, self.x + left, level)


LIMIT_KEY = "data.limits.max_image_pixels"


_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF Orientation values that swap width and height when displayed


def _check_size(image, max_pixels: int, limit_key: str) -> None:
    width, height = image.size
    if width * height > max_pixels:  # before decoding: the header is all that was read
        raise DecodeError(f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                          f"{max_pixels:,} ({limit_key})")


JPEG_SUFFIXES = (".jpg", ".jpeg")  # pictures stored with lossy compression: no mask's or label map's codes survive
# TIFF compressions that change pixel values: JPEG (old- and new-style, Adobe's, DNG's lossy JPEG). JPEG 2000, WebP
# and JPEG XL can be lossless, which the header does not say: not refused
JPEG_COMPRESSIONS = frozenset({6, 7, 33007, 34892})
LOSSY_MASK = ("a JPEG-compressed TIFF mask: JPEG's lossy compression changes the class codes along every edge; "
              "save masks with lossless compression (deflate, LZW, zstd) or as PNG")


def _open_pil(data: bytes, name: str, max_pixels: int, limit_key: str = LIMIT_KEY):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we check the header ourselves, against the configured limit
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image, max_pixels, limit_key)
        image.load()
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise _unreadable(exc, len(data)) from None
    from PIL import ImageOps

    # as displayed: cameras store portrait shots landscape with an EXIF Orientation, and
    # annotation tools (labelme, CVAT, any viewer) draw masks on the picture as shown
    return ImageOps.exif_transpose(image)


def picture_header(stream, max_pixels: int, limit_key: str = LIMIT_KEY) -> tuple[int, int, int]:
    """(height, width, bits per sample) of a JPEG / PNG / BMP as displayed (EXIF Orientation applied), from its
    header only: nothing is decoded, and only the first bytes of ``stream`` (a seekable binary file) are read.

    Raises DecodeError for an unreadable header or an image over ``max_pixels`` (naming ``limit_key``).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        head = stream.read(26)
        stream.seek(0)
        with Image.open(stream) as image:
            _check_size(image, max_pixels, limit_key)
            width, height = image.size
            if _header_orientation(image) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            # Pillow opens 16-bit colour PNGs as 8-bit RGB: the IHDR says; other 16-bit pictures open as I;16 / I
            bits = png_bit_depth(head) or (16 if image.mode.startswith("I") else 1 if image.mode == "1" else 8)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unreadable(exc, stream.seek(0, io.SEEK_END)) from None
    return height, width, bits


def _header_orientation(image) -> int:
    """The EXIF Orientation found while reading an opened picture's header (JPEG APP1, PNG eXIf before the
    pixels), 1 when none: image.getexif() would decode a whole PNG to look for an eXIf chunk after them."""
    from PIL import Image

    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    return int(exif.get(0x0112) or 1)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = (2, 4, 6)  # RGB, grey + alpha, RGBA (IHDR colour type)


def png_bit_depth(header: bytes) -> int | None:
    """A PNG's bits per sample (1, 2, 4, 8 or 16) from its first 26 bytes; None for any other file. IHDR is the
    first chunk: its bit depth at byte 24, its colour type at 25 (PNG spec, 11.2.2)."""
    return header[24] if len(header) >= 26 and header[:8] == _PNG_SIGNATURE else None


def _png16_colour(data: bytes, max_pixels: int, limit_key: str = LIMIT_KEY) -> np.ndarray | None:
    """A 16-bit colour PNG's samples, (H, W, s) uint16 as displayed (EXIF Orientation applied); None for any other
    file. Pillow reads these as 8-bit, keeping each sample's high byte: a 12-bit camera's 0..4095 would be 0..15
    whatever the bit depth. Raises DecodeError: unreadable, over ``max_pixels``."""
    if png_bit_depth(data) != 16 or data[25] not in _PNG_COLOUR_TYPES:
        return None
    import imagecodecs
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_size(image, max_pixels, limit_key)
            orientation = _header_orientation(image)
        samples = imagecodecs.png_decode(data)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unreadable(exc, len(data)) from None
    return orient(samples, orientation)


def _unreadable(exc: Exception, size: int) -> DecodeError:
    """Why PIL could not read a picture of ``size`` bytes, in words (its own text names a BytesIO object)."""
    from PIL import UnidentifiedImageError

    if size == 0:
        return DecodeError("an empty file (0 bytes): an interrupted copy or export?")
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError(f"not a picture PIL can read ({size} bytes of an unknown or damaged format)")
    return DecodeError(f"unreadable image ({type(exc).__name__}: {exc})")


# TIFF PhotometricInterpretation values (TIFF 6.0, section 3 and 21-23)
MINISWHITE, MINISBLACK, RGB, PALETTE, YCBCR = 0, 1, 2, 3, 6
_PHOTOMETRIC_NAMES = {0: "MinIsWhite", 1: "MinIsBlack", 2: "RGB", 3: "Palette", 4: "TransparencyMask",
                      5: "Separated (CMYK)", 6: "YCbCr", 8: "CIELab", 9: "ICCLab", 10: "ITULab", 32803: "CFA",
                      32844: "LogL", 32845: "LogLuv", 34892: "LinearRaw"}
_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating point", 4: "undefined",
                   5: "complex integer", 6: "complex floating point"}
_DECODED_TO_RGB = {6, 7, 34892}  # JPEG: libjpeg converts YCbCr (JPEG 2000, e.g. Aperio's 33003, does not)


@dataclass(frozen=True)
class PixelFormat:
    """How stored TIFF samples become displayed pixels: the photometric interpretation, the bits
    per sample actually used, and a palette page's colour map ((3, 2**bits) uint16)."""

    photometric: int
    bits: int
    colormap: np.ndarray | None = None

    @property
    def band_bits(self) -> int | None:
        """The significant bits of the stored samples read as bands (``stored_bands``): ``bits``, or None (the
        dtype's) for a palette page, whose samples are indices read as they are."""
        return None if self.photometric == PALETTE else self.bits

    def displayed(self, array: np.ndarray) -> np.ndarray:
        """Stored samples (h, w) or (h, w, s), unsigned integers -> RGB uint8 (h, w, 3) as a viewer shows them.
        Raises DecodeError: a sample above ``bits`` (``scale_to_uint8``)."""
        if self.photometric == PALETTE:
            rgb = np.moveaxis(self.colormap[:, np.asarray(array, np.intp)], 0, -1)  # (h, w, 3) uint16
            return np.ascontiguousarray((rgb.astype(np.uint32) * 255 // 65535).astype(np.uint8))
        if array.ndim == 3:  # the colour samples, by the interpretation: extra samples (alpha...) are not shown
            array = array[..., 0] if self.photometric in (MINISWHITE, MINISBLACK) else array[..., :3]
        array = scale_to_uint8(array, self.bits)
        if self.photometric == MINISWHITE:
            array = 255 - array  # 0 is white: what every viewer shows
        return to_rgb8(array)


BIT_DEPTH = 16  # significant bits of 16-bit samples unless the user says otherwise (data.bit_depth)
# the brightest decoded value (0..255) of an input "too dark": a 12-bit range in 16-bit samples read as 16-bit
# decodes to 0..16 (training warns data.images_dark, segment segment.slide_dark)
DARK = 16


def image_maxima(image: np.ndarray, counts: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The brightest value of each image of a scene in ``image`` (H, W, C), whose channels are the images'
    ``counts`` in order (none: one picture); 0 for no pixels. Compared with ``DARK``."""
    bounds = np.cumsum([0, *(counts or [image.shape[-1]])])
    return [int(image[..., start:stop].max()) if image.size else 0 for start, stop in zip(bounds[:-1], bounds[1:])]


def depth_applies(stored: int) -> bool:
    """Whether a bit depth changes how samples of ``stored`` bits read: 9 to 16 bits (cameras' 16-bit frames);
    samples of 8 bits or fewer, or of 32 (scientific TIFFs), read alike whatever it says."""
    return 8 < stored <= 16


def depth_record(read: dict[str, int]) -> int | dict[str, int]:
    """How a slide's samples were read, as its outputs record it (``summary.json``'s ``bit_depth``), from the bits
    each image of more than 8 bits per sample was read with (by name): one number when they agree (the default,
    16, when there is none), else ``{name: bits}``. Records of one bit depth per slide stay valid."""
    depths = set(read.values())
    if len(depths) <= 1:
        return depths.pop() if depths else BIT_DEPTH
    return dict(sorted(read.items()))


def describe_depth(record: int | dict[str, int]) -> str:
    """``12-bit`` or ``bse 16-bit, ppl 12-bit``: a ``depth_record`` for messages."""
    if isinstance(record, dict):
        return ", ".join(f"{name} {bits}-bit" for name, bits in record.items())
    return f"{record}-bit"


def significant_bits(stored: int, bit_depth: int = BIT_DEPTH) -> int:
    """The bits that carry a sample's value: ``stored`` bits per sample (a TIFF's BitsPerSample, 16 for a 16-bit
    PNG), or fewer when the user gives a camera's ``bit_depth`` (``data.bit_depth``: 12 for 0..4095 in 16-bit
    words); as stored where ``depth_applies`` says it does not apply."""
    return min(stored, bit_depth) if depth_applies(stored) else stored


def dtype_bits(array: np.ndarray, bit_depth: int = BIT_DEPTH) -> int:
    """``significant_bits`` of samples stored in ``array``'s dtype (bool: 1, uint8: 8, uint16: 16)."""
    return 1 if array.dtype == np.bool_ else significant_bits(array.dtype.itemsize * 8, bit_depth)


def scale_to_uint8(array: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Unsigned samples of ``bits`` significant bits (default: the dtype's, ``dtype_bits``) -> uint8 over the
    full 0..255 range (1-bit 0/1 -> 0/255, 12-bit 0..4095 -> 0..255); an alpha or extra sample keeps its place.

    Raises DecodeError: signed or float samples; ``SampleAboveBitDepth``: a sample above ``2**bits - 1`` (``bits``
    below the storage's: e.g. a bit depth of 12 for frames with values up to 65535), never clipped silently.
    """
    if bits is None:
        bits = dtype_bits(array)
    if array.dtype == np.uint8 and bits == 8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind != "u":
        raise DecodeError(f"unsupported pixel type {array.dtype}")
    top = (1 << bits) - 1
    if bits < array.dtype.itemsize * 8 and array.size and (peak := int(array.max())) > top:
        y, x = np.unravel_index(int(np.argmax(array)), array.shape)[:2]
        raise SampleAboveBitDepth(peak, bits, int(y), int(x))
    return (array.astype(np.float64) * (255.0 / top) + 0.5).astype(np.uint8)


def tiff_pixel_format(page, mask: bool = False, bit_depth: int = BIT_DEPTH) -> PixelFormat:
    """Check a TIFF page's pixel encoding and say how to display it; DecodeError naming the tag otherwise.

    ``mask``: the page holds class codes, which must be read as stored (MinIsBlack or Palette
    indices, or RGB colours), never converted. ``bit_depth``: the significant bits of samples stored with
    more than 8 (``significant_bits``); palette indices are always as stored.
    """
    if 262 in page.tags:
        photometric = int(page.photometric)
    else:  # no tag: libtiff's reading (tifffile would say MinIsWhite, inverting every pixel)
        photometric = RGB if page.samplesperpixel >= 3 else MINISBLACK
    name = _PHOTOMETRIC_NAMES.get(photometric, str(photometric))
    sample_format = int(getattr(page, "sampleformat", 1))
    if sample_format != 1:
        raise DecodeError(f"SampleFormat {sample_format} ({_SAMPLE_FORMATS.get(sample_format, 'unknown')}) samples "
                          "are not pixels minseg can show; save unsigned integer samples")
    bits = int(page.bitspersample)
    if photometric == YCBCR and int(page.compression) not in _DECODED_TO_RGB:
        raise DecodeError(f"PhotometricInterpretation YCbCr with Compression {int(page.compression)} is not "
                          "converted to RGB by its decoder; save as RGB (or YCbCr JPEG)")
    if photometric in (MINISWHITE, MINISBLACK) and page.samplesperpixel - len(page.extrasamples or ()) > 1:
        raise DecodeError(f"PhotometricInterpretation {name} with {page.samplesperpixel} samples per pixel; "
                          "greyscale has one")
    if photometric not in (MINISWHITE, MINISBLACK, RGB, PALETTE, YCBCR):
        raise DecodeError(f"PhotometricInterpretation {name} cannot be shown as RGB faithfully; save as RGB or "
                          "greyscale (MinIsBlack)")
    if mask and photometric not in (MINISBLACK, PALETTE, RGB):
        raise DecodeError(f"a mask stored with PhotometricInterpretation {name}: class codes must be stored as "
                          "MinIsBlack or Palette indices (or RGB colours)")
    colormap = None
    if photometric == PALETTE:
        colormap = page.colormap
        if colormap is None:
            raise DecodeError("PhotometricInterpretation Palette without a ColorMap tag")
        colormap = np.asarray(colormap, np.uint16)
        if colormap.ndim == 1:  # tifffile gives one row for a grey palette
            colormap = np.repeat(colormap[None], 3, axis=0)
        if colormap.shape[-1] < 1 << bits:
            raise DecodeError(f"ColorMap has {colormap.shape[-1]} entries for {bits}-bit indices "
                              f"({1 << bits} needed)")
    return PixelFormat(photometric, bits if photometric == PALETTE else significant_bits(bits, bit_depth), colormap)


#: series of whole-slide formats that go with the slide rather than being another image of it (tifffile's names)
ASSOCIATED_SERIES = frozenset({"thumbnail", "label", "macro", "map", "overview", "preview"})
_REDUCED = 1  # NewSubfileType bit 0: a reduced-resolution version of another image in the file


def tiff_main_series(tiff):
    """The one image a TIFF holds, as a tifffile series (its pyramid levels included); what else the file may hold
    is a whole-slide format's associated images (SVS / NDPI thumbnail, label, macro, map) and pages flagged as
    reduced-resolution versions (NewSubfileType bit 0).

    Raises DecodeError when it holds more: a stack of pages (PPL and XPL, channels, z, time) or several images,
    which would otherwise be read as their first page without a word.
    """
    series = list(tiff.series)
    if not series:
        raise DecodeError("unreadable TIFF (no image in it)")
    main = series[0]
    pages = len(main.pages)
    if pages > 1:
        raise DecodeError(f"multi-page TIFF: {pages} pages of {main.pages[0].imagewidth}x{main.pages[0].imagelength}"
                          f" (shape {'x'.join(map(str, main.shape))}, axes {main.axes}); minseg reads one image per "
                          "file: save each page as its own file (e.g. the PPL and XPL images of a scene, declared as "
                          "data.sources[].channels)")
    others = [s for s in series[1:] if not _associated(s)]
    if others:
        shapes = ", ".join("x".join(map(str, s.shape)) for s in series)
        raise DecodeError(f"multi-image TIFF: {len(series)} images (series of shape {shapes}), not one image and "
                          "its pyramid levels; minseg reads one image per file: save each image as its own file")
    return main


def _associated(series) -> bool:
    # tifffile names an SVS / NDPI file's 'label', 'macro'; an OME-TIFF carries its Image names, which Bio-Formats
    # (bfconvert, raw2ometiff) writes as 'label image', 'macro image', 'thumbnail image'
    name = str(series.name).strip().lower().removesuffix(" image")
    if name in ASSOCIATED_SERIES and series.kind not in ("generic", "shaped", "uniform"):
        return True  # named by a whole-slide format's reader
    return all(int(getattr(page, "subfiletype", 0) or 0) & _REDUCED for page in series.pages if page is not None)


def tiff_orientation(page) -> int:
    """A TIFF page's Orientation tag (274); 1 (top-left) when absent."""
    tag = page.tags.get(274)
    return int(tag.value) if tag is not None else 1


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF / TIFF Orientation (1-8) to (h, w, ...) samples: the picture as displayed.

    2 mirror, 3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse,
    8 rotate 90° anticlockwise (the same transforms as Pillow's ``ImageOps.exif_transpose``).
    """
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, -1)
    elif orientation == 7:
        array = np.rot90(array, 2).swapaxes(0, 1)
    elif orientation == 8:
        array = np.rot90(array, 1)
    return np.ascontiguousarray(array)


def _read_tiff(data: bytes, max_pixels: int, mask: bool = False, limit_key: str = LIMIT_KEY,
               colours: bool = False, exact: bool = False, bit_depth: int = BIT_DEPTH) -> np.ndarray:
    """The TIFF's one image (``tiff_main_series``), as displayed (images: RGB uint8) or as stored and oriented
    (masks; ``colours``: a palette mask looked up to RGB, for class maps keyed by colour). ``exact``: refuse
    lossy (JPEG) compression, which changes a mask's codes."""
    array, pixel_format = _tiff_samples(data, max_pixels, mask, limit_key, exact, bit_depth)
    if mask and not (colours and pixel_format.photometric == PALETTE):
        return array
    try:
        return pixel_format.displayed(array)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None


def _tiff_samples(data: bytes, max_pixels: int, mask: bool = False, limit_key: str = LIMIT_KEY,
                  exact: bool = False, bit_depth: int = BIT_DEPTH) -> tuple[np.ndarray, PixelFormat]:
    """The TIFF's one image as stored and oriented, (h, w) or (h, w, samples), and how it is displayed."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff_main_series(tiff).pages[0]
            if exact and int(page.compression) in JPEG_COMPRESSIONS:
                raise DecodeError(LOSSY_MASK)
            height, width = page.imagelength, page.imagewidth
            if height * width > max_pixels:
                raise DecodeError(f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                                  f"{max_pixels:,} ({limit_key})")
            pixel_format = tiff_pixel_format(page, mask, bit_depth)
            array = page.asarray()
            if int(page.planarconfig) == 2 and array.ndim == 3 and page.samplesperpixel > 1:
                array = np.moveaxis(array, 0, -1)  # separate planes -> (h, w, samples)
            return orient(array, tiff_orientation(page)), pixel_format
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None


def decode_image(data: bytes, name: str, max_pixels: int, limit_key: str = LIMIT_KEY,
                 bit_depth: int = BIT_DEPTH) -> np.ndarray:
    """RGB uint8 (H, W, 3) as displayed; greyscale is repeated, alpha dropped, 16-bit scaled down by their
    significant bits (BitsPerSample, or ``bit_depth`` when fewer: ``significant_bits``).

    Raises DecodeError for unreadable files, what cannot be shown (naming the TIFF tag), a TIFF holding several
    pages or images (``tiff_main_series``), images over ``max_pixels`` (checked from the header, before
    decoding; the message names ``limit_key``), and samples above ``bit_depth`` bits (``scale_to_uint8``).
    """
    if name.lower().endswith(TIFF_SUFFIXES):
        return _read_tiff(data, max_pixels, limit_key=limit_key, bit_depth=bit_depth)
    if (samples := _png16_colour(data, max_pixels, limit_key)) is not None:
        return to_rgb8(samples, significant_bits(16, bit_depth))
    image = _open_pil(data, name, max_pixels, limit_key)
    if image.mode in _SIXTEEN_BIT_MODES:
        return to_rgb8(_sixteen_bit(image), significant_bits(16, bit_depth))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # palette, bilevel, CMYK, LAB, RGBA ... as Pillow displays them
    return to_rgb8(np.asarray(image))


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # older Pillow opens 16-bit grey PNGs as "I"


def _sixteen_bit(image) -> np.ndarray:
    """A 16-bit grey picture's samples, (H, W) uint16. Raises DecodeError: 32-bit integers (mode "I") beyond
    0..65535."""
    array = np.asarray(image)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise DecodeError(f"32-bit integer pixels ({array.min()}..{array.max()}) are not an image minseg can show")
    return array.astype(np.uint16, copy=False)


def decode_channels(data: bytes, name: str, max_pixels: int, mode: str, bands: int | None = None,
                    limit_key: str = LIMIT_KEY, bit_depth: int = BIT_DEPTH) -> np.ndarray:
    """(H, W, k) uint8 input channels of one image of a scene (``data.sources[].channels[].mode``):

    - ``rgb``: k = 3, as ``decode_image`` shows the file;
    - ``grey``: k = 1, the displayed picture's luminance (ITU-R 601-2, Pillow's ``L``): a grey file's own values;
    - ``bands``: k = ``bands``, every stored sample (a multi-band TIFF; PNG grey / RGB / RGBA as stored), 16-bit
      scaled to 8 bits over their significant bits (BitsPerSample, or ``bit_depth`` when fewer).

    Raises DecodeError as ``decode_image``, and when a file has another number of samples than ``bands``.
    """
    if mode == "rgb":
        return decode_image(data, name, max_pixels, limit_key, bit_depth)
    if mode == "grey":
        return luminance(decode_image(data, name, max_pixels, limit_key, bit_depth))
    if name.lower().endswith(TIFF_SUFFIXES):  # as stored, oriented
        array, pixel_format = _tiff_samples(data, max_pixels, mask=True, limit_key=limit_key, bit_depth=bit_depth)
        return stored_bands(array, bands, bits=pixel_format.band_bits)
    array = _png16_colour(data, max_pixels, limit_key)
    if array is None:
        array = np.asarray(_open_pil(data, name, max_pixels, limit_key))
    return stored_bands(array, bands, bits=dtype_bits(array, bit_depth))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) uint8 luminance (ITU-R 601-2, Pillow's ``L``) of displayed RGB: a grey picture's own values."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


def stored_bands(array: np.ndarray, bands: int | None, expected: str | None = None,
                 bits: int | None = None) -> np.ndarray:
    """(H, W, k) uint8 of stored samples, every one a channel, scaled to 8 bits from their ``bits`` significant
    bits (default: the dtype's, ``dtype_bits``).

    Raises DecodeError: another number of samples than ``bands`` (the message ends with ``expected``, by default
    what ``channels[].bands`` says), signed / float samples, or a sample above ``bits`` (``scale_to_uint8``).
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] != bands:
        raise DecodeError(f"has {array.shape[-1]} sample(s) per pixel"
                          f"{expected or f', channels[].bands says {bands}'}")
    if array.dtype.kind not in "ub":
        raise DecodeError(f"{array.dtype} samples: minseg reads unsigned integer bands (8 or 16 bit)")
    return np.ascontiguousarray(scale_to_uint8(array, bits))


def decode_samples(data: bytes, name: str, max_pixels: int,
                   limit_key: str = LIMIT_KEY) -> tuple[np.ndarray, np.ndarray | None]:
    """A PNG / JPEG's stored samples (what ``decode_image`` shows them as is ``show_samples``): grey (H, W),
    grey + alpha (H, W, 2), RGB and RGBA (H, W, 3 | 4) as stored, bilevel as bool, 16-bit grey as uint16, 16-bit
    colour as uint16 (H, W, s), a palette image's indices (H, W) with its (256, 3) uint8 palette; other modes
    (CMYK ...) as displayed, RGB uint8. Nothing is scaled: a bit depth applies when they are shown. Returns
    (samples, palette or None). Class-id masks saved as grey, bilevel or palette PNGs keep their ids.

    Raises DecodeError as ``decode_image``.
    """
    if (samples := _png16_colour(data, max_pixels, limit_key)) is not None:
        return samples, None
    image = _open_pil(data, name, max_pixels, limit_key)
    if image.mode == "P":
        palette = np.zeros((256, 3), np.uint8)
        entries = np.asarray(image.getpalette() or [], np.uint8)[: 256 * 3]
        palette.reshape(-1)[: len(entries)] = entries
        return np.asarray(image), palette
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit(image), None
    # "1": bilevel, as bool; with alpha as stored too (read as bands, the alpha is a band, as in training)
    if image.mode in ("1", "L", "LA", "RGB", "RGBA"):
        return np.asarray(image), None
    return decode_image(data, name, max_pixels, limit_key), None  # 8-bit modes Pillow converts (CMYK, LAB ...)


def show_samples(samples: np.ndarray, palette: np.ndarray | None, bit_depth: int = BIT_DEPTH) -> np.ndarray:
    """RGB uint8 (H, W, 3) of ``decode_samples``' output, as ``decode_image`` shows the file."""
    if palette is not None:
        return np.ascontiguousarray(palette[samples])
    return to_rgb8(samples, dtype_bits(samples, bit_depth))


def drop_alpha(array: np.ndarray) -> np.ndarray:
    """The samples a viewer shows: grey (H, W) of grey or grey + alpha, RGB (H, W, 3) of RGB or RGBA. Dropped
    before scaling: a 16-bit alpha is 65535 (opaque) whatever bit depth the camera's samples have."""
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return array[..., 0]
    if array.ndim == 3 and array.shape[2] == 4:
        return array[..., :3]
    return array


def to_rgb8(array: np.ndarray, bits: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) from grey, grey + alpha, RGBA or 16-bit pixels of ``bits`` significant bits
    (default: the dtype's); the alpha is not shown. Raises DecodeError as ``scale_to_uint8``, or for another
    shape."""
    array = drop_alpha(array)
    if array.dtype != np.uint8:  # unsigned samples (signed / float: refused there)
        array = scale_to_uint8(array, bits)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim != 3 or array.shape[2] != 3:
        raise DecodeError(f"unsupported image shape {array.shape}")
    return np.ascontiguousarray(array)


def display_rgb(image: np.ndarray, first: int = 3) -> np.ndarray:
    """An input image (H, W, C) as RGB to look at: its first image, of ``first`` channels (a scene's images are
    stacked in order): 3 as they are, 1 (grey) repeated, other band counts by their first band in grey."""
    if image.ndim == 2:
        image = image[..., None]
    if first == 3 and image.shape[2] >= 3:
        return np.ascontiguousarray(image[..., :3])
    return np.repeat(image[..., :1], 3, axis=2)


def mask_palette(data: bytes, name: str) -> np.ndarray | None:
    """The colour table of a palette (indexed colour) PNG / GIF / BMP mask, (N, 3) uint8, from its header (nothing
    decoded); None for any other mask. :func:`decode_mask` gives such a mask's indices, not its colours."""
    from PIL import Image

    if name.lower().endswith(TIFF_SUFFIXES):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            palette = image.getpalette("RGB") if image.mode == "P" else None
    except Exception:  # noqa: BLE001 (decode_mask has said what is wrong with the file)
        return None
    return np.asarray(palette, np.uint8).reshape(-1, 3) if palette else None


def _refuse_transparent(image) -> None:
    """A colour mask with see-through pixels (an alpha channel, or a palette / grey PNG's transparency entry):
    read as RGB they would take the colour under them (often black, the background's), labelling pixels nobody
    painted. Raises DecodeError with their count."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    see_through = int((alpha < 255).sum())
    if see_through:
        raise DecodeError(f"mask has {see_through} transparent pixel(s) ({see_through / alpha.size:.1%}): as colours "
                          "they would read as the colour under them and be trained as that class; make the mask "
                          "opaque, painting unlabelled pixels a colour listed in data.classes.ignore_colors")


def decode_mask(data: bytes, name: str, max_pixels: int, rgb: bool = False) -> np.ndarray:
    """Mask codes (H, W) as stored (palette PNGs give their indices; a grey mask saved as RGB, every channel
    alike, gives its one channel), or (H, W, 3) for RGB.

    Raises DecodeError: unreadable, not single-channel (codes) / no colours (``rgb``), transparent pixels
    (``rgb``), a TIFF holding several pages or images (``tiff_main_series``), over ``max_pixels``.
    """
    if name.lower().endswith(TIFF_SUFFIXES):
        array = _read_tiff(data, max_pixels, mask=True, colours=rgb, exact=True)
        if rgb and array.ndim != 3:
            raise DecodeError(f"mask has no colours (shape {array.shape}) but mask_encoding is colors")
    else:
        image = _open_pil(data, name, max_pixels)
        if rgb:
            _refuse_transparent(image)
            array = np.asarray(image.convert("RGB"))
        elif image.mode in ("RGB", "RGBA"):
            array = np.asarray(image)
            opaque = image.mode == "RGB" or bool((array[..., 3] == 255).all())
            if not (opaque and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()):
                kind = "with transparent pixels" if not opaque else "in colour"
                raise DecodeError(f"mask is {image.mode} {kind} but class codes were expected (set "
                                  "mask_encoding: colors and a color per class for colour masks)")
            array = array[..., 0]  # a grey mask saved as RGB: every channel holds the codes
        else:
            array = np.asarray(image)
    if not rgb and array.ndim != 2:
        raise DecodeError(f"mask must be single-channel, got shape {array.shape}")
    return array
