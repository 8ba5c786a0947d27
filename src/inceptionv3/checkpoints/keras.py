"""Keras files: Keras 2 ``.h5`` weights and full models, Keras 3 ``.weights.h5`` and ``.keras`` archives, read with
h5py (the ``keras`` extra). Layers are matched by creation order; each dataset's shape and type are checked before
its data is read."""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from .base import (
    MAX_CLASSES,
    MAX_TENSOR_NUMEL,
    MAX_UNPACK_RATIO,
    Checkpoint,
    CheckpointFormat,
    conv_blocks,
    count_include_pad_for,
    drop_background_class,
    expected_shapes,
    tf_conv_bn,
)

MAX_KERAS_ARCHIVE_BYTES = 4 * MAX_TENSOR_NUMEL + (256 << 20)
"""The most a ``.keras`` archive's weights may unpack to: the largest head in fp32 and the rest of the network."""


def _layer_number(name: str) -> int:
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


# Keras 3 ``.weights.h5`` files number layers by their position in ``model.layers`` (topological
# order), not by creation order as layer names do. Entry k is the creation index of the k-th
# Conv2D (and, identically, BatchNormalization) of keras.applications.InceptionV3 in that order.
_KERAS3_TOPOLOGICAL_TO_CREATION = (
    0, 1, 2, 3, 4, 8, 6, 9, 5, 7, 10, 11, 15, 13, 16, 12, 14, 17, 18, 22, 20, 23, 19, 21, 24, 25, 27, 28, 26, 29,
    34, 35, 31, 36, 32, 37, 30, 33, 38, 39, 44, 45, 41, 46, 42, 47, 40, 43, 48, 49, 54, 55, 51, 56, 52, 57, 50, 53,
    58, 59, 64, 65, 61, 66, 62, 67, 60, 63, 68, 69, 72, 73, 70, 74, 71, 75, 80, 77, 81, 78, 79, 82, 83, 76, 84, 89,
    86, 90, 87, 88, 91, 92, 85, 93,
)


def _keras3_creation_name(name: str, path: Path) -> str:
    kind = re.fullmatch(r"(conv2d|batch_normalization)(_\d+)?", name)
    if not kind:
        return name
    position = _layer_number(name)
    if position >= len(_KERAS3_TOPOLOGICAL_TO_CREATION):
        raise CheckpointError(f"{path}: not a Keras Inception V3 file: layer {name!r} is past its last layer")
    return f"{kind.group(1)}_{_KERAS3_TOPOLOGICAL_TO_CREATION[position]}"


def _not_keras_inception(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a Keras Inception V3 file: {problem}")


def _h5_names(obj: Any, attribute: str, path: Path, what: str, limit: int) -> list[str]:
    """A list-of-names attribute, its length checked before it is read (attributes can be large too)."""
    if attribute not in obj.attrs:
        raise _not_keras_inception(path, f"{what} has no {attribute!r} attribute")
    shape = obj.attrs.get_id(attribute).shape or ()
    if math.prod(shape) > limit:
        raise _not_keras_inception(path, f"{what} lists {math.prod(shape):,} {attribute} (Inception V3 has under "
                                         f"{limit:,})")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(obj.attrs[attribute])]


def _keras_layers(handle: Any, path: Path) -> dict[str, dict[str, Any]]:
    """{layer name: {weight role: h5py dataset}} from any of the three Keras HDF5 layouts.

    Datasets are returned unread, so that their shapes can be checked before any data is.
    """
    import h5py

    def role(weight_name: str) -> str:
        return weight_name.rsplit("/", 1)[-1].split(":")[0]

    def member(group: Any, key: str, what: str) -> Any:
        # `key in dataset` would scan every row of a dataset (a crafted 10^9-row one takes hours)
        if not isinstance(group, h5py.Group):
            raise _not_keras_inception(path, f"{what} is not a group")
        if key not in group:
            raise _not_keras_inception(path, f"{what} has no {key!r}")
        return group[key]

    layers: dict[str, dict[str, Any]] = {}
    if "layers" in handle and "layer_names" not in handle.attrs:  # Keras 3 .weights.h5
        if not isinstance(handle["layers"], h5py.Group):
            raise _not_keras_inception(path, "'layers' is not a group")
        for name, group in handle["layers"].items():
            if not isinstance(group, h5py.Group) or "vars" not in group or not len(group["vars"]):
                continue
            variables = member(group, "vars", f"layer {name!r}")
            arrays = [member(variables, str(i), f"layer {name!r}") for i in range(len(variables))]
            if name.startswith("batch_normalization"):
                roles = ["beta", "moving_mean", "moving_variance"]
                if len(arrays) == 4:
                    roles = ["gamma"] + roles
            elif len(arrays) == 2:
                roles = ["kernel", "bias"]
            else:
                roles = ["kernel"]
            if len(arrays) != len(roles):
                raise _not_keras_inception(path, f"layer {name!r} holds {len(arrays)} variables")
            layers[_keras3_creation_name(name, path)] = dict(zip(roles, arrays, strict=True))
        return layers
    # Keras 2 weights files and legacy full-model files share the "layer_names" layout.
    root = member(handle, "model_weights", "the file") if "model_weights" in handle else handle
    if "layer_names" not in root.attrs:
        raise CheckpointError(f"{path}: an HDF5 file, but not a Keras model or weights file")
    for name in _h5_names(root, "layer_names", path, "the file", limit=10_000):
        group = member(root, name, "the file")
        weight_names = _h5_names(group, "weight_names", path, f"layer {name!r}", limit=16)
        if weight_names:
            layers[name] = {role(w): member(group, w, f"layer {name!r}") for w in weight_names}
    return layers


@dataclass(frozen=True)
class StoredTensor:
    """A variable of a TensorFlow checkpoint, described by its index and read only once its shape has passed."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, _: Any) -> np.ndarray:
        return np.asarray(self.read())


def _read_dataset(dataset: Any, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    """Read one weight after checking that it is a float dataset of the shape Inception V3 needs."""
    if not isinstance(dataset, StoredTensor):
        import h5py

        if not isinstance(dataset, h5py.Dataset):
            raise _not_keras_inception(path, f"{what} is not a dataset")
        if dataset.external or dataset.is_virtual:  # such a dataset reads its bytes from other files on disk
            raise _not_keras_inception(path, f"{what} keeps its data in other files (external or virtual storage)")
    if tuple(dataset.shape) != tuple(shape):
        raise _not_keras_inception(path, f"{what} has shape {tuple(dataset.shape)}, Inception V3 needs {tuple(shape)}")
    if dataset.dtype.kind != "f":
        raise _not_keras_inception(path, f"{what} holds {dataset.dtype}, not floats")
    return np.asarray(dataset[()])


def keras_checkpoint(layers: Mapping[str, Mapping[str, Any]], path: Path) -> Checkpoint:
    """Keras layers by name ({layer: {role: dataset}}, from any Keras file) mapped onto this layout."""
    convs = sorted((n for n in layers if re.fullmatch(r"conv2d(_\d+)?", n)), key=_layer_number)
    bns = sorted((n for n in layers if re.fullmatch(r"batch_normalization(_\d+)?", n)), key=_layer_number)
    dense = [n for n in layers if "bias" in layers[n] and getattr(layers[n].get("kernel"), "ndim", 0) == 2]
    blocks = conv_blocks(with_aux=False)
    if len(convs) != len(blocks) or len(bns) != len(blocks):
        raise CheckpointError(
            f"{path}: found {len(convs)} conv and {len(bns)} batch-norm layers, Inception V3 has {len(blocks)}"
        )
    if len(dense) != 1:
        raise CheckpointError(f"{path}: expected one Dense classifier layer, found {len(dense)} (include_top=False?)")
    shapes = expected_shapes(1000, aux=False)

    def weight(layer: str, role: str, shape: tuple[int, ...], optional: bool = False) -> np.ndarray | None:
        if role not in layers[layer]:
            if optional:
                return None
            raise _not_keras_inception(path, f"layer {layer!r} has no {role!r}")
        return _read_dataset(layers[layer][role], shape, f"layer {layer!r} {role!r}", path)

    state: dict[str, Tensor] = {}
    for prefix, conv, bn in zip(blocks, convs, bns, strict=True):
        out, inp, kh, kw = shapes[f"{prefix}.conv.weight"]
        vector = (out,)
        tf_conv_bn(state, prefix, weight(conv, "kernel", (kh, kw, inp, out)), weight(bn, "beta", vector),
                    weight(bn, "moving_mean", vector), weight(bn, "moving_variance", vector),
                    weight(bn, "gamma", vector, optional=True))
    notes = ["mapped Keras layers by creation order (their names are auto-numbered)"]
    kernel = layers[dense[0]]["kernel"]
    classes = kernel.shape[1]
    if not 1 <= classes <= MAX_CLASSES + 1:
        raise _not_keras_inception(path, f"layer {dense[0]!r} has {classes:,} outputs (at most {MAX_CLASSES:,} "
                                         "classes are accepted)")
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(weight(dense[0], "kernel", (2048, classes)).T))
    state["fc.bias"] = torch.from_numpy(weight(dense[0], "bias", (classes,)).copy())
    state = drop_background_class(state, notes)
    return Checkpoint(
        state, "keras", str(path), preprocess="keras", count_include_pad=count_include_pad_for("keras"), notes=notes
    )


KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"
"""The member of a Keras 3 ``.keras`` archive (a zip) that holds the weights, in the ``.weights.h5`` layout."""


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _is_keras_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return KERAS_ARCHIVE_WEIGHTS in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False  # a damaged zip is reported by the reader of the format it claims to be


def _keras_archive_weights(path: Path) -> io.BytesIO:
    """The weights member of a ``.keras`` archive, in memory, after checking the bytes it claims."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo(KERAS_ARCHIVE_WEIGHTS)
        if member.file_size > MAX_UNPACK_RATIO * size + (1 << 20) or member.file_size > MAX_KERAS_ARCHIVE_BYTES:
            raise CheckpointError(f"{path}: {KERAS_ARCHIVE_WEIGHTS} claims {member.file_size:,} bytes in a "
                                  f"{size:,}-byte archive: refused as a zip bomb")
        return io.BytesIO(archive.read(member))


def _from_keras(path: Path) -> Checkpoint:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a Keras .h5 or .keras file needs h5py: pip install -e '.[keras]' in the clone"
        ) from None
    try:
        source = _keras_archive_weights(path) if _is_keras_archive(path) else path
        with h5py.File(source, "r") as handle:
            return keras_checkpoint(_keras_layers(handle, path), path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile) as exc:  # what zipfile and h5py raise on damaged or crafted files
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable Keras file ({type(exc).__name__}: {reason})") from None


FORMAT = CheckpointFormat("keras", sniff=lambda path: _is_hdf5(path) or _is_keras_archive(path),
                          read=lambda path, source: _from_keras(path), sources=("keras",))
