"""safetensors files: this package's canonical files, and torchvision- or timm-layout weights saved as safetensors.
Every tensor's shape is checked from the header before its data is read."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import CheckpointError
from .base import Checkpoint, CheckpointFormat, check_declared_sizes
from .layouts import from_tensors


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            check_declared_sizes({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}, path)
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _is_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read(path: Path, source: str | None) -> Checkpoint:
    tensors, metadata = _read_safetensors(path)
    return from_tensors(tensors, path, source, metadata, {})


FORMAT = CheckpointFormat("safetensors", sniff=_is_safetensors, read=_read)
