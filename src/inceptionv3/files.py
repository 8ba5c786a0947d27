"""Files on disk: bounded reads, the cache folder, content hashes, and writes that are all-or-nothing.

Everything a user names is opened with ``open_regular`` (a FIFO or a device is refused from its mode, before it can
block) and read with ``read_at_most`` (never more than its bound, whatever the file or an inflater claims).
Everything that writes weights, exports or run state goes through ``atomic_path``, so that a crash, a full disk
or Ctrl-C never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import InputError


def cache_dir() -> Path:
    """``$INCEPTIONV3_HOME`` or ``~/.cache/inceptionv3``: downloads and compiled exports."""
    return Path(os.environ.get("INCEPTIONV3_HOME") or Path.home() / ".cache" / "inceptionv3")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The file's hex digest, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def unique_temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh name beside ``path`` (``<name>.<pid>.<random><suffix>``), created empty with the permissions any
    new file gets (0666 less the umask, unlike mkstemp's 0600), so that two writers never share it."""
    while True:
        candidate = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}")
        try:
            with open(candidate, "xb"):
                return candidate
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block ends without an error,
    removed otherwise (Ctrl-C included). The result has the permissions any new file gets here (the umask's,
    usually 0644), even when the writer made it 0600 (safetensors does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temp_path(path, suffix)
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def display_name(name: str | os.PathLike) -> str:
    """A file name as text any UTF-8 stream accepts. Names that are not UTF-8 arrive as str with lone surrogates
    (``os.listdir``'s surrogateescape); their odd bytes are written as ``\\xNN`` (``caf\\xe9.jpg``), so a row or
    a message is never lost to an odd name."""
    return os.fspath(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class FileReadError(InputError):
    """A file that cannot be read as asked: missing, not a regular file, over its size bound, or empty. ``path``
    is the name as given, ``reason`` says why in words and ``kind`` is ``unreadable``, ``too_large`` or ``empty``,
    so that each caller can re-raise it as its own error (an image's, a dataset's, a checkpoint's)."""

    def __init__(self, path: str, reason: str, *, kind: str) -> None:
        super().__init__(f"{display_name(path)}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind


def _megabytes(count: int) -> str:
    return f"{count // 1024**2} MB" if count % 1024**2 == 0 else f"{count:,}-byte"


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def not_regular(name: str, mode: int, what: str) -> str | None:
    """Why a file of this mode cannot be read as ``what``, or None for a regular file. Reading a FIFO or a
    device would block or never end, so they are refused from their mode, before they are read."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"is a directory, not {what}"
    kind = next((kind for test, kind in _KINDS if test(mode)), "a special file")
    if os.path.islink(name):
        return f"is a symlink to {kind} ({display_name(os.path.realpath(name))}), not a regular file"
    return f"is {kind}, not a regular file"


def too_big(size: str, max_bytes: int) -> str:
    return f"larger than the {_megabytes(max_bytes)} limit (max_bytes): {size}"


def open_regular(path: str | os.PathLike, max_bytes: int, what: str) -> BinaryIO:
    """Open a regular file of at most ``max_bytes`` for reading, or raise a ``FileReadError`` saying why not.

    ``stat`` comes first because merely opening a FIFO blocks until a writer appears. The file is then opened
    with ``O_NONBLOCK`` and checked again with ``fstat``, so a file swapped for a FIFO in between cannot hang us.
    """
    name = os.fspath(path)
    if "\x00" in name:  # no such path can exist, and the OS calls would raise a bare ValueError
        raise FileReadError(name, "not a valid file name (it holds a NUL byte)", kind="unreadable")
    try:
        problem = not_regular(name, os.stat(name).st_mode, what)
        if problem:
            raise FileReadError(name, problem, kind="unreadable")
        handle = open(name, "rb", opener=lambda file, flags: os.open(file, flags | os.O_NONBLOCK))
    except (FileNotFoundError, NotADirectoryError):
        reason = "broken symlink" if os.path.islink(name) else "no such file"
        raise FileReadError(name, reason, kind="unreadable") from None
    except IsADirectoryError:
        raise FileReadError(name, f"is a directory, not {what}", kind="unreadable") from None
    except PermissionError:
        raise FileReadError(name, "permission denied", kind="unreadable") from None
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise FileReadError(name, reason, kind="unreadable") from None
    info = os.fstat(handle.fileno())
    problem, kind = not_regular(name, info.st_mode, what), "unreadable"
    if not problem and info.st_size > max_bytes:
        problem, kind = too_big(f"{info.st_size:,} bytes", max_bytes), "too_large"
    if problem:
        handle.close()
        raise FileReadError(name, problem, kind=kind)
    return handle


def read_at_most(stream: BinaryIO, limit: int, first: int = 1 << 16) -> bytes | None:
    """All of a stream (a file, a gzip or zip member) if it holds at most ``limit`` bytes, else None, having held
    no more than ``limit + 1`` of them. Python allocates whatever ``read(n)`` asks for up front, and inflaters
    produce as much as they are asked for, so the first read asks for ``first`` bytes and later ones for 64 KB."""
    step = min(first, limit) + 1
    chunks, total = [], 0
    while total <= limit:
        chunk = stream.read(min(step, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        step = 1 << 16
    return None


def read_file(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The file's bytes, or a ``FileReadError`` that says which of the usual things went wrong. At most
    ``max_bytes + 1`` bytes are read, so a file that grows (or lies about its size) is refused all the same."""
    name = os.fspath(path)
    with open_regular(name, max_bytes, what) as handle:
        try:
            data = read_at_most(handle, max_bytes, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            raise FileReadError(name, f"read error ({exc.strerror or exc})", kind="unreadable") from None
    if data is None:
        raise FileReadError(name, too_big(f"more than {max_bytes:,} bytes read", max_bytes), kind="too_large")
    if not data:
        raise FileReadError(name, "empty file (0 bytes)", kind="empty")
    return data


#: Extensions searched for in folders, in any letter case.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, matched by extension in any case, in sorted order. A name that
    is not UTF-8 is kept, as a str with lone surrogates (``os.walk``'s surrogateescape; ``os.fsencode`` gives
    its bytes back). Nothing is opened here: FIFOs and devices named like images are refused when loaded."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found.extend(Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return found


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run: text starting with ``= + - @``, tab or carriage return gets a
    leading apostrophe (OWASP's advice against CSV injection); non-UTF-8 names are escaped. Numbers stay numbers."""
    if not isinstance(value, str):
        return value
    value = display_name(value)
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


class SafeCSVWriter:
    """``csv.writer`` whose every text cell goes through ``csv_cell``: the one way this package writes CSV."""

    def __init__(self, handle) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([csv_cell(cell) for cell in row])


__all__ = ["SafeCSVWriter", "atomic_path", "unique_temp_path", "cache_dir", "csv_cell", "display_name", "file_digest"]
