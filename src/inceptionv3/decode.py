"""Turn whatever a user hands us (a path, bytes, a PIL image, a BGR array) into 8-bit RGB, or a typed error.

Two decoders, picked by the weights' preset, because decoders disagree by a grey level or two on JPEG and
those differences reach the logits:

- ``cv2``: ``cv2.imdecode(IMREAD_COLOR)``, exactly what mmcv's ``LoadImageFromFile`` does for mmpretrain;
- ``pil``: Pillow, as torchvision and timm read images.

Both give the same answer for the odd cases, and the tests hold them to it:

- grayscale and palette images become three equal or looked-up channels;
- **alpha is dropped**: RGBA, LA and transparent palette images keep their colour channels as stored, the same
  as mmpretrain (cv2) and torchvision (``convert('RGB')``). Nothing is composited onto a background;
- 16-bit images keep their high byte (``value >> 8``), as cv2 does;
- CMYK JPEGs are converted to RGB;
- EXIF orientation is applied;
- only the first frame of a GIF (or of a multi-page TIFF) is used.
"""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .files import FileReadError, display_name, read_file, too_big

#: Pillow's own hard limit: twice its warning threshold. A larger image is refused before it is decoded.
MAX_IMAGE_PIXELS = 2 * 89_478_485

#: Largest encoded image file (or bytes) read, by default: 100 MB, far above any real photo, far below a
#: sparse or endless file that would fill memory.
MAX_BYTES = 100 * 1024**2

DECODERS = ("cv2", "pil")

#: libjpeg's inverse DCTs: ``accurate`` (JDCT_ISLOW, what OpenCV, Pillow and most tools use) or ``fast``
#: (JDCT_IFAST, the default of TensorFlow's ``decode_jpeg``, so of TF-slim's evaluation).
JPEG_IDCTS = ("accurate", "fast")

#: The only Pillow formats an input is opened as. Pillow would otherwise try every plugin it has: an EPS body
#: runs Ghostscript, ICO and ICNS decode their largest icon before any size check. JPEG covers cameras' MPO
#: files too; PPM is what pytorch-fid also reads.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")

#: Most scans a JPEG may have. A progressive photo has about ten; a crafted file with thousands held a decoder for
#: minutes (libjpeg-turbo's own scan limit exists for the same reason).
MAX_JPEG_SCANS = 256

_SOF_MARKERS = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless", 0xC5: "differential",
                0xC6: "differential progressive", 0xC7: "differential lossless", 0xC9: "arithmetic-coded",
                0xCA: "arithmetic-coded progressive", 0xCB: "arithmetic-coded lossless",
                0xCD: "arithmetic-coded differential", 0xCE: "arithmetic-coded differential progressive",
                0xCF: "arithmetic-coded differential lossless"}

#: ``exact`` decodes every pixel (bit-identical to mmpretrain and torchvision); ``fast`` decodes large JPEGs at a
#: reduced DCT scale that still covers the preset's resize; ``auto`` picks exact for eager fp32, fast otherwise.
DECODE_MODES = ("auto", "exact", "fast")

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image


LOAD_ERROR_KINDS = ("unreadable", "too_large", "empty", "too_many_pixels", "not_an_image", "corrupt", "unsupported",
                    "not_finite", "other")
"""What went wrong, as a type rather than words: counted by the CLI's summary and the server's metrics.
``not_finite`` is the model's (NaN or infinite scores), ``other`` an unexpected decoder error, the others the
input's."""


class ImageLoadError(InputError):
    """An input that cannot become an image. ``name`` names it (a path, or ``<bytes #3>``), ``reason`` says why
    in words and ``kind`` in one of ``LOAD_ERROR_KINDS``.

    ``name`` is the path exactly as given (lone surrogates included, so ``os.fsencode`` gives the file's bytes);
    the message shows it through ``display_name``, so that it can always be printed."""

    def __init__(self, name: str, reason: str, *, kind: str):
        if kind not in LOAD_ERROR_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LOAD_ERROR_KINDS)}, got {kind!r}")
        super().__init__(f"{display_name(name)}: {reason}")
        self.name = name
        self.reason = reason
        self.kind = kind

    @property
    def source(self) -> str:
        """The old name of ``name``, kept for code written against 0.1.0."""
        warnings.warn("ImageLoadError.source is now ImageLoadError.name", DeprecationWarning, stacklevel=2)
        return self.name


def describe_input(item: object, index: int | None = None) -> str:
    """A name for an input in messages and result rows: the path itself, or its kind and position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    kind = {bytes: "bytes", bytearray: "bytes", memoryview: "bytes", np.ndarray: "array"}.get(type(item))
    if kind is None:
        kind = "PIL image" if isinstance(item, Image.Image) else type(item).__name__
    return f"<{kind}>" if index is None else f"<{kind} #{index}>"


def _image_error(exc: FileReadError) -> ImageLoadError:
    return ImageLoadError(exc.path, exc.reason, kind=exc.kind)


def read_image_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    """An image file's bytes (``files.read_file``), or an ``ImageLoadError`` saying why not."""
    try:
        return read_file(path, max_bytes, "an image file")
    except FileReadError as exc:
        raise _image_error(exc) from None


def jpeg_problem(data: bytes) -> str | None:
    """Why a JPEG cannot be decoded here within bounds, from its markers alone: too many scans, or a coding
    (arithmetic, lossless, 12-bit) that the decoders refuse with an unhelpful message. ``None`` when it is fine.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so every FF DA in the
    file is a real start-of-scan."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        return f"JPEG with {scans:,} scans, more than the {MAX_JPEG_SCANS} any real photo has (refused: decoding it " \
               "would take minutes)"
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS and i + 4 < len(data):
            kind, precision = _SOF_MARKERS[marker], data[i + 4]
            if marker not in (0xC0, 0xC1, 0xC2):
                return f"{kind} JPEG (SOF{marker - 0xC0}): not supported by the decoders; convert it to baseline"
            if precision != 8:
                return f"{precision}-bit JPEG: only 8-bit JPEGs are supported; convert it to 8 bits"
            return None
        i += 2 + length
    return None


def _probe(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Read only the header, so that a decompression bomb is refused before any pixel is decoded. Only the
    formats of ``IMAGE_FORMATS`` are tried, and a JPEG's markers are checked first (``jpeg_problem``)."""
    if data[:2] == b"\xff\xd8":
        problem = jpeg_problem(data)
        if problem:
            raise ImageLoadError(name, problem, kind="unsupported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.init()  # registers every plugin once, so that each listed format is known by name
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused as a possible decompression bomb ({exc})",
                             kind="too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format (JPEG, PNG, BMP, WebP, TIFF or GIF)",
                             kind="not_an_image") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageLoadError(name, f"corrupt image header ({exc})", kind="corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            name, f"refused as a possible decompression bomb: {width} x {height} pixels exceeds the limit of "
            f"{max_pixels:,} (max_pixels)", kind="too_many_pixels")
    if width == 0 or height == 0:
        raise ImageLoadError(name, f"image has no pixels ({width} x {height})", kind="corrupt")
    return image


def pil_to_rgb(image: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """8-bit RGB from any Pillow mode, with EXIF orientation applied. See the module docstring for the rules."""
    try:
        image.seek(0)
    except (AttributeError, EOFError, ValueError):
        pass
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block should not cost the picture
        pass
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # Pillow's own I -> RGB conversion clips at 255 instead of scaling: keep the high byte, as cv2 does.
            values = np.asarray(image, dtype=np.int64)
            shift = 8 if values.max(initial=0) <= 0xFFFF else 24
            gray = np.clip(values >> shift, 0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if image.mode == "F":
            values = np.asarray(image, dtype=np.float32)
            if not np.isfinite(values).all():  # black would be a silent wrong answer
                raise ImageLoadError(name, "float image with NaN or inf pixels", kind="corrupt")
            scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
            gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise ImageLoadError(name, f"cannot decode ({exc})", kind="corrupt") from None


_CV2_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}


def dct_scale(width: int, height: int, min_side: int | None) -> int:
    """The largest JPEG DCT reduction (8, 4 or 2; else 1) that keeps the short side at or above ``min_side``
    (libjpeg rounds a scaled size up)."""
    if not min_side:
        return 1
    short = min(width, height)
    return next((s for s in (8, 4, 2) if -(-short // s) >= min_side), 1)


def _decode_fast_idct(data: bytes) -> np.ndarray | None:
    """A JPEG through libjpeg-turbo's fast integer IDCT with fancy upsampling, as TensorFlow's ``decode_jpeg``
    decodes by default (simplejpeg exposes the flag; no EXIF rotation, as in TensorFlow). ``None`` when it cannot
    (a CMYK JPEG, a damaged one): the caller's decoder then decodes it or names the problem."""
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
    except (ValueError, RuntimeError):
        return None


def decode_bytes(data: bytes, name: str = "<bytes>", decoder: str = "cv2",
                 max_pixels: int = MAX_IMAGE_PIXELS, min_side: int | None = None,
                 jpeg_idct: str = "accurate") -> np.ndarray:
    """Decode an encoded image to an H x W x 3 uint8 RGB array. With ``min_side``, a JPEG is decoded at a
    reduced scale (libjpeg-turbo's DCT scaling: cv2's ``IMREAD_REDUCED_COLOR_*``, Pillow's ``draft``) whose short
    side stays at or above it: several times faster on camera photos, and a little different (the "fast" decode).
    Other formats, and JPEGs too small to reduce, decode exactly."""
    if not data:
        raise ImageLoadError(name, "empty input (0 bytes)", kind="empty")
    probe = _probe(data, name, max_pixels)
    scale = dct_scale(*probe.size, min_side) if probe.format == "JPEG" else 1
    if jpeg_idct not in JPEG_IDCTS:
        raise InputError(f"jpeg_idct must be one of {JPEG_IDCTS}, got {jpeg_idct!r}")
    if jpeg_idct == "fast" and probe.format == "JPEG" and scale == 1:
        rgb = _decode_fast_idct(data)
        if rgb is not None:
            return rgb
    if decoder == "cv2":
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_REDUCED[scale])
        if bgr is not None:
            return np.ascontiguousarray(bgr[:, :, ::-1])
        # cv2 says nothing about why; let Pillow decode it, which either works or names the problem.
    elif decoder != "pil":
        raise InputError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if scale > 1:
        probe.draft(probe.mode if probe.mode in ("RGB", "L", "CMYK") else "RGB",
                    (probe.size[0] // scale, probe.size[1] // scale))
    try:
        probe.load()
    except Exception as exc:  # truncated and corrupt files surface here under several types
        reason = str(exc) or type(exc).__name__
        raise ImageLoadError(name, f"corrupt or truncated image data ({reason})", kind="corrupt") from None
    return pil_to_rgb(probe, name)


def bgr_array_to_rgb(array: np.ndarray, name: str = "<array>") -> np.ndarray:
    """An OpenCV-style array (BGR, as mmpretrain reads arrays) to RGB. Gray (H x W) and BGRA are accepted."""
    if array.dtype != np.uint8:
        raise ImageLoadError(name, f"array must be uint8 (0-255, BGR), got dtype {array.dtype}", kind="unsupported")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageLoadError(name, f"array must be H x W, H x W x 3 (BGR) or H x W x 4 (BGRA), got shape {array.shape}",
                             kind="unsupported")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(name, f"array has no pixels (shape {array.shape})", kind="unsupported")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array[:, :, 2::-1])


def load_image(item: ImageInput, decoder: str = "cv2", name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
               max_bytes: int = MAX_BYTES, min_side: int | None = None, jpeg_idct: str = "accurate") -> np.ndarray:
    """Any supported input to H x W x 3 uint8 RGB. NumPy arrays are read as **BGR**, as mmpretrain reads them.
    A file or bytes over ``max_bytes``, or a path that is not a regular file, is refused before it is read.
    ``min_side``: decode JPEGs reduced, keeping the short side at least this (see :func:`decode_bytes`)."""
    name = name or describe_input(item)
    if isinstance(item, (str, os.PathLike)):
        return decode_bytes(read_image_file(item, max_bytes), name, decoder, max_pixels, min_side, jpeg_idct)
    if isinstance(item, (bytes, bytearray, memoryview)):
        size = item.nbytes if isinstance(item, memoryview) else len(item)
        if size > max_bytes:
            raise ImageLoadError(name, too_big(f"{size:,} bytes", max_bytes), kind="too_large")
        return decode_bytes(bytes(item), name, decoder, max_pixels, min_side, jpeg_idct)
    if isinstance(item, np.ndarray):
        return bgr_array_to_rgb(item, name)
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, name)
    raise ImageLoadError(
        name, f"unsupported input type {type(item).__name__}: pass a path, bytes, a PIL image or a uint8 BGR array",
        kind="unsupported")
