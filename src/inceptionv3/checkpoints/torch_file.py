"""PyTorch files (``torch.save``'s zip and the legacy pre-1.6 pickle), read with ``torch.load(weights_only=True)``
only after their declared sizes have been held to the file's own: a zip may not unpack to much more than itself,
and a legacy pickle's storages may not declare more bytes than the file holds. This reader is the last one asked,
so a file no reader claims gets its message: what the file looks like instead (an image, an HTML page...)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .base import MAX_UNPACK_RATIO, Checkpoint, CheckpointFormat, check_declared_sizes, log
from .layouts import from_tensors

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic number of torch < 1.6


_NOT_CHECKPOINTS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (a WebP image?)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "gzip data (a .tar.gz archive? extract the checkpoint from it first)"),
    (b"<", "text or HTML (an error page saved in place of the download?)"),
)


def _what_it_is(head: bytes) -> str:
    if not head:
        return "an empty file"
    for magic, name in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return name
    return f"unrecognised content starting {head[:8]!r}"


def _check_torch_zip(path: Path) -> None:
    """Refuse a torch zip whose members claim bytes it does not hold, before torch.load allocates them."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: a damaged zip archive, not a readable PyTorch or Keras checkpoint "
                              f"({exc})") from None
    if not any(m.filename == "data.pkl" or m.filename.endswith("/data.pkl") for m in members):
        raise CheckpointError(f"{path}: not a checkpoint (a zip archive without the data.pkl torch.save writes)")
    for member in members:
        if member.header_offset + member.compress_size > size:
            raise CheckpointError(
                f"{path}: zip member {member.filename!r} claims {member.compress_size:,} bytes past the end "
                f"of the {size:,}-byte file"
            )
    unpacked = sum(member.file_size for member in members)
    if unpacked > MAX_UNPACK_RATIO * size + (1 << 20):
        raise CheckpointError(
            f"{path}: its zip members unpack to {unpacked:,} bytes from a {size:,}-byte file (at most "
            f"{MAX_UNPACK_RATIO}x is accepted; torch.save does not compress): refused as a zip bomb"
        )


#: Bytes per element of the storage classes a legacy (pre-zip) torch file names.
_LEGACY_ELEMENT_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
                         "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                         "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}


_PICKLE_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "SHORT_BINSTRING"}


_PICKLE_INTS = {"BININT", "BININT1", "BININT2", "INT", "LONG1", "LONG4", "LONG"}


def _check_legacy_storages(path: Path) -> None:
    """A pre-zip torch file declares each storage's element count in its pickle, and torch allocates that much
    before it reads a byte of data: a few hundred bytes could ask for gigabytes. The storages' data follows the
    pickles in the file itself, so together they can never be larger than the file. Read the pickle's opcodes
    without running them (``pickletools``) and hold the declared sizes to that."""
    import pickletools

    size = path.stat().st_size
    declared: dict[str, int] = {}
    with open(path, "rb") as handle:
        try:
            for _ in range(3):  # magic number, protocol version, system info
                for _op in pickletools.genops(handle):
                    pass
            values: list[Any] = []
            memo: dict[Any, Any] = {}
            for op, arg, _pos in pickletools.genops(handle):
                name = op.name
                if name in _PICKLE_STRINGS or name in _PICKLE_INTS:
                    values.append(arg)
                elif name == "GLOBAL":
                    values.append(("global", arg))
                elif name in ("BINPUT", "LONG_BINPUT", "PUT") and values:
                    memo[arg] = values[-1]
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    values.append(memo.get(arg))
                elif name == "BINPERSID":  # a storage: ('storage', class, key, location, numel, view)
                    recent = values[-10:]
                    starts = [i for i, value in enumerate(recent) if value == "storage"]
                    if starts and len(recent) >= starts[-1] + 5:
                        kind, key, _location, numel = recent[starts[-1] + 1:starts[-1] + 5]
                        if isinstance(kind, tuple) and isinstance(numel, int):
                            element = _LEGACY_ELEMENT_BYTES.get(str(kind[1]).rsplit(" ", 1)[-1], 1)
                            declared[str(key)] = max(0, numel) * element
                    values.append(None)
                else:
                    values.append(None)
        except Exception as exc:  # a damaged pickle: torch.load will say what is wrong
            log.debug("%s: legacy pickle not scanned (%s)", path, exc)
            return
    total = sum(declared.values())
    if total > size:
        raise CheckpointError(f"{path}: its storages declare {total:,} bytes, more than the file's {size:,}: "
                              "refused before anything is allocated")


def torch_load(path: Path) -> Any:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        _check_torch_zip(path)
    elif head.startswith(_LEGACY_TORCH_MAGIC):
        _check_legacy_storages(path)
    if not head.startswith(b"PK\x03\x04") and not head.startswith(_LEGACY_TORCH_MAGIC):
        raise CheckpointError(
            f"{path}: not a checkpoint ({_what_it_is(head)}; expected a PyTorch .pth, .safetensors or Keras .h5 file)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects beyond tensors and plain "
            f"containers, which could run code ({str(exc).splitlines()[0]}). Re-save its state_dict "
            "or convert it from a trusted environment."
        ) from None
    except Exception as exc:  # torch.load raises many types on junk (struct.error, EOFError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {reason})") from None


def check_torch_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Sizes as for any file, and no tensor may view more elements than its data holds (a stride-0 view
    of one stored value could declare gigabytes, which the first copy would then allocate)."""
    check_declared_sizes({key: tuple(value.shape) for key, value in tensors.items()}, path)
    for key, value in tensors.items():
        if value.layout != torch.strided:
            raise CheckpointError(f"{path}: tensor {key!r} is {value.layout}, not a dense tensor")
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(
                f"{path}: tensor {key!r} {tuple(value.shape)} is a broadcast view of "
                f"{value.untyped_storage().nbytes():,} stored bytes, not saved weights"
            )


def unwrap_torch_object(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a loaded torch object into (flat tensor dict, meta) for the common wrappers."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict of tensors, found {type(obj).__name__})")
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    for wrapper in ("state_dict", "model", "module", "state_dict_ema", "model_ema"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return dict(inner), dict(meta)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    return tensors, dict(meta)


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The file's flat tensors and its ``meta`` dict, bounded and checked: no view larger than its data."""
    tensors, meta = unwrap_torch_object(torch_load(path), path)
    check_torch_tensors(tensors, path)
    return tensors, meta


def _read(path: Path, source: str | None) -> Checkpoint:
    tensors, meta = read_tensors(path)
    return from_tensors(tensors, path, source, {}, meta)


FORMAT = CheckpointFormat("pytorch", sniff=lambda path: True, read=_read)
