"""Files on disk: the cache folder, content hashes, and writes that are all-or-nothing.

Everything that writes weights, exports or run state goes through ``atomic_path``, so that a crash, a full disk
or Ctrl-C never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".partial") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block ends without an error,
    removed otherwise (including on Ctrl-C). The file gets the permissions any new file gets (the umask's, usually
    0644), and the process id in the temporary name keeps two writers apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["atomic_path", "cache_dir", "file_digest"]
