"""Files on disk: the cache folder, content hashes, and writes that are all-or-nothing.

Everything that writes weights, exports or run state goes through ``atomic_path``, so that a crash, a full disk
or Ctrl-C never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


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
