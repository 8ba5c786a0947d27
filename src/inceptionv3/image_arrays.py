"""Images stored as one uint8 array: the ``.npz`` sample and reference batches of ADM, DiT and their successors
(key ``arr_0``, N x H x W x 3, with optional ``arr_1`` labels), and plain ``.npy`` files of the same shape.

A 50,000 x 256 x 256 batch is 9.8 GB, so nothing here loads a whole array: the ``.npy`` header is read and
checked first (dtype, shape, order, declared size against what the file holds), then images are read a batch at a
time straight from the file or its zip member, stored or deflated. Memory follows the batch size, not the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .decode import MAX_IMAGE_PIXELS
from .errors import InputError
from .fid_math import open_npz
from .files import display_name, open_regular

IMAGE_KEY = "arr_0"
"""The member ADM's ``np.savez`` writes images to (labels, when present, go to ``arr_1``)."""

ARRAY_SUFFIXES = (".npz", ".npy")

_MAX_DEFLATE_RATIO = 1100
"""deflate cannot expand data more than about 1032-fold; a member that declares more is a bomb, not images."""


@dataclass(frozen=True)
class ImageArray:
    """A checked N x H x W x 3 uint8 array in an ``.npy`` file or an ``.npz`` member, read in batches."""

    path: str
    key: str | None
    """The ``.npz`` member (``arr_0``), or None for an ``.npy`` file."""
    count: int
    height: int
    width: int
    data_offset: int
    """Where the pixels start in the file or member (after the ``.npy`` header)."""
    deflated: bool = False
    """A compressed ``.npz`` member: it can only be read front to back, so batches are read in one pass."""

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def label(self) -> str:
        """How messages and feature files name the array: ``samples.npz:arr_0`` or ``images.npy``."""
        return display_name(self.path) + (f":{self.key}" if self.key else "")

    def name(self, index: int) -> str:
        """One image's name, as a features file lists it: ``samples.npz:arr_0[17]``."""
        return f"{self.label}[{index}]"

    def digest(self) -> str:
        """What tells two arrays apart in saved results without hashing gigabytes: the name, member and shape."""
        text = f"{os.path.basename(self.path)}\0{self.key}\0{self.count}x{self.height}x{self.width}x3"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    @classmethod
    def open(cls, path: str | os.PathLike, key: str = IMAGE_KEY) -> ImageArray:
        """Read and check the header; every problem is an :class:`InputError` that names the file."""
        path = os.fspath(path)
        member = key if path.endswith(".npz") else None
        with _stream(path, member) as (stream, available, deflated):
            offset, shape, fortran, dtype = _read_header(stream, path)
            label = display_name(path) + (f":{member}" if member else "")
            problem = _shape_problem(shape, fortran, dtype)
            if problem:
                raise InputError(f"{label}: {problem}")
            size = math.prod(shape)
            if offset + size > available:
                raise InputError(f"{label}: truncated: its header declares {shape[0]} images of {shape[1]}x"
                                 f"{shape[2]} ({size:,} bytes), the file holds {max(0, available - offset):,}")
        return cls(path, member, shape[0], shape[1], shape[2], offset, deflated)

    def read(self, start: int, count: int) -> np.ndarray:
        """Images ``start`` to ``start + count`` (fewer at the end), by seeking: what a loader worker does with its
        batch of a stored member or an ``.npy``. In a deflated member this reads everything before ``start``."""
        return next(self.batches(count, first=0, step=1, offset=start))[1]

    def batches(self, batch_size: int, *, first: int = 0, step: int = 1,
                offset: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first image, B x H x W x 3 uint8) for batches ``first``, ``first + step``, ... of the
        images from ``offset`` on (torchrun shares whole batches round robin). A stream that ends early raises an
        :class:`InputError`."""
        if batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        with _stream(self.path, self.key) as (stream, _available, compressed):
            _skip(stream, self.data_offset, self.data_offset, compressed)
            position = 0  # bytes after the header already read
            for batch in range(first, math.ceil((self.count - offset) / batch_size), step):
                start = offset + batch * batch_size
                wanted = start * self.image_bytes
                if wanted != position:
                    _skip(stream, self.data_offset + wanted, wanted - position, compressed)
                images = min(batch_size, self.count - start)
                data = _read_exactly(stream, images * self.image_bytes)
                if data is None:
                    raise InputError(f"{self.label}: truncated or corrupt after image {start} (of the {self.count} "
                                     "its header declares)")
                position = wanted + len(data)
                yield start, np.frombuffer(data, np.uint8).reshape(images, self.height, self.width, 3)


def is_image_array(path: str | os.PathLike) -> bool:
    """An ``.npy`` file, or an ``.npz`` with an ``arr_0`` member (statistics and features files have none)."""
    name = os.fspath(path)
    if name.endswith(".npy"):
        return True
    if not name.endswith(".npz"):
        return False
    with open_npz(name) as archive:
        return f"{IMAGE_KEY}.npy" in archive.namelist()


def _shape_problem(shape: tuple, fortran: bool, dtype: np.dtype) -> str | None:
    if dtype.hasobject:
        return "holds Python objects (a pickle), which are never loaded"
    if dtype != np.uint8:
        return f"holds {dtype} values; image arrays are uint8 (0-255), as ADM's batches are"
    if len(shape) != 4 or shape[3] != 3:
        return f"has shape {shape}; image arrays are N x H x W x 3 (RGB)"
    if min(shape) < 1:
        return f"has shape {shape}: no images"
    if shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        return f"declares {shape[1]}x{shape[2]} images, over the {MAX_IMAGE_PIXELS:,}-pixel limit"
    if fortran and shape[0] > 1:
        return ("is stored in Fortran (column-major) order, where one image's pixels lie across the whole file; "
                "save it with np.save(path, np.ascontiguousarray(images))")
    return None


@contextlib.contextmanager
def _stream(path: str, member: str | None) -> Iterator[tuple[BinaryIO, int, bool]]:
    """(readable stream, bytes it holds, whether it is deflated) for an ``.npy`` file or an ``.npz`` member."""
    if member is None:
        with open_regular(path, 1 << 50, "an .npy file") as handle:  # its FileReadError is an InputError
            handle.seek(0)
            yield handle, os.fstat(handle.fileno()).st_size, False
        return
    with open_npz(path) as archive:
        try:
            info = archive.getinfo(f"{member}.npy")
        except KeyError:
            raise InputError(f"{display_name(path)}: no {member!r} array (holds "
                             f"{', '.join(sorted(n.removesuffix('.npy') for n in archive.namelist())) or 'nothing'})"
                             ) from None
        compressed = info.compress_type != zipfile.ZIP_STORED
        if compressed and info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1):
            raise InputError(f"{display_name(path)}:{member}: declares {info.file_size:,} bytes from "
                             f"{info.compress_size:,} compressed, more than deflate can produce (a zip bomb)")
        try:
            with archive.open(info) as stream:
                yield stream, info.file_size, compressed
        except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError) as exc:
            raise InputError(f"{display_name(path)}:{member}: unreadable ({exc})") from None


def _read_header(stream: BinaryIO, path: str) -> tuple[int, tuple, bool, np.dtype]:
    """(offset of the data, shape, Fortran order, dtype) from an ``.npy`` header, which numpy parses with
    ``ast.literal_eval`` (no code runs) and bounds to 10,000 bytes."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]}, which this reader does not know")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{display_name(path)}: not a readable .npy array ({exc})") from None
    return stream.tell(), tuple(int(s) for s in shape), bool(fortran), dtype


def _read_exactly(stream: BinaryIO, size: int) -> bytearray | None:
    """``size`` bytes into a writable buffer (torch warns on read-only arrays), or None when the stream ends first
    or its deflated data is corrupt."""
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    try:
        while done < size:
            got = stream.readinto(view[done:])
            if not got:
                return None
            done += got
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return None
    return buffer


def _skip(stream: BinaryIO, absolute: int, forward: int, compressed: bool) -> None:
    """To the data at ``absolute``: a seek, except in a deflated member, where only reading moves forward."""
    if not compressed:
        stream.seek(absolute)
        return
    while forward > 0:
        chunk = stream.read(min(forward, 1 << 24))
        if not chunk:
            return
        forward -= len(chunk)


__all__ = ["ARRAY_SUFFIXES", "IMAGE_KEY", "ImageArray", "is_image_array"]
