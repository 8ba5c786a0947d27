"""Read every public Inception V3 checkpoint format into one state-dict layout (torchvision's).

Each source gets a converter that returns a :class:`Checkpoint`; :func:`build_model` then loads it
strictly. Files are opened only with ``torch.load(weights_only=True)``, safetensors or h5py, so a
checkpoint can never run code on load.

A file may not declare more than Inception V3 holds: zip members may not unpack to much more than the
file's own size, tensor and dataset shapes are checked before their data is read (safetensors, HDF5)
or before anything is computed from them (torch), the head may have at most :data:`MAX_CLASSES`
classes, and a preset's crop must lie in :data:`CROP_RANGE`. So a crafted file of a few megabytes
gets a one-line :class:`CheckpointError` instead of exhausting memory.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError
from .files import atomic_path, file_digest, not_regular
from .imagenet import MEAN, STD
from .model import MIN_INPUT_SIZE, InceptionV3
from .preprocess import PRESETS, Preprocess

log = logging.getLogger(__name__)

SOURCES = ("mmpretrain", "torchvision", "timm", "keras", "tf-slim", "inceptionv3")
"""Checkpoint formats ``get_model(source=...)`` accepts; ``None`` detects the format."""

CANONICAL_FORMAT = "inceptionv3"

# TensorFlow ports average-pool over the valid pixels only; torch ports divide by the full window.
_COUNT_INCLUDE_PAD = {
    "mmpretrain": True,
    "torchvision": True,
    "timm": True,
    "keras": False,
    "tf-slim": False,
}

# torchvision's transform_input maps ImageNet-normalised input to the [-1, 1] input its Google
# weights expect: x' = x * std / 0.5 + (mean - 0.5) / 0.5, per channel.


MAX_CLASSES = 100_000
"""The largest head a checkpoint may declare. Its fc is then 100,000 x 2048 (820 MB in fp32), the
biggest tensor a file may hold; anything larger is refused before memory is spent on it."""

MAX_TENSOR_NUMEL = 2048 * (MAX_CLASSES + 1)  # TensorFlow heads carry one extra (background) row

MAX_KERAS_ARCHIVE_BYTES = 4 * MAX_TENSOR_NUMEL + (256 << 20)
"""The most a ``.keras`` archive's weights may unpack to: the largest head in fp32 and the rest of the network."""

MAX_UNPACK_RATIO = 4
"""torch.save stores zip members uncompressed, so a real checkpoint unpacks to its own size; a deflated
one may unpack to this many times its size (float weights barely compress), a zip bomb to thousands."""

CROP_RANGE = (MIN_INPUT_SIZE, 2048)
"""Crop sizes a file's preset may ask for (``"mmpretrain@75"``): the network needs 75, and 2048 already
costs 50 MB per image; a crafted 20000 would make every image allocate gigabytes."""


@dataclass(frozen=True)
class KnownFile:
    """A published checkpoint recognised by its content, so that it is read the way it must be."""

    filename: str
    sha256: str
    """The full digest; where only the prefix in the file name is published, that prefix, and then the
    file is recognised only under its published name (32 bits alone could be matched on purpose)."""
    description: str


TORCHVISION_GOOGLE_SHA256 = "0cc3c7bd75056d25e46cba549dc184522069b81e9787eff6df84f397bd52a5ef"

TRANSFORM_INPUT_FILES: tuple[KnownFile, ...] = (
    KnownFile("inception_v3_google-0cc3c7bd.pth", TORCHVISION_GOOGLE_SHA256,
              "torchvision's Inception_V3_Weights.IMAGENET1K_V1"),
    KnownFile("inception_v3_google-1a9a5a14.pth", "1a9a5a14", "torchvision's first upload of Google's weights"),
)
"""Files that expect torchvision's ``transform_input``: read from anywhere, they get it folded in."""


def count_include_pad_for(source: str) -> bool:
    """The average-pool padding convention of a checkpoint source (True unless TensorFlow-trained)."""
    return _COUNT_INCLUDE_PAD.get(source, True)


@dataclass
class Checkpoint:
    """A checkpoint converted to this package's layout, with what the file said about itself."""

    state_dict: dict[str, Tensor]
    source: str
    path: str = ""
    class_names: list[str] | None = None
    preprocess: str | None = None
    count_include_pad: bool = True
    notes: list[str] = field(default_factory=list)
    transform_input_folded: bool | None = None
    """Whether torchvision's transform_input was folded in on reading; None where that is not known
    (a converted file was folded, or not, when it was written)."""

    @property
    def num_classes(self) -> int:
        return _num_classes(self.state_dict, self.path)

    @property
    def has_aux(self) -> bool:
        return any(key.startswith("AuxLogits.") for key in self.state_dict)


# ---------------------------------------------------------------------------------------------
# Reading files


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


def _torch_load(path: Path) -> Any:
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


def _check_declared_sizes(shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """No tensor may be larger than Inception V3's largest (its fc at MAX_CLASSES classes)."""
    for key, shape in shapes.items():
        numel = math.prod(shape)
        if numel > MAX_TENSOR_NUMEL:
            raise CheckpointError(
                f"{path}: tensor {key!r} declares shape {tuple(shape)} ({numel:,} values), more than any "
                f"Inception V3 tensor with up to {MAX_CLASSES:,} classes"
            )


def _check_torch_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Sizes as for any file, and no tensor may view more elements than its data holds (a stride-0 view
    of one stored value could declare gigabytes, which the first copy would then allocate)."""
    _check_declared_sizes({key: tuple(value.shape) for key, value in tensors.items()}, path)
    for key, value in tensors.items():
        if value.layout != torch.strided:
            raise CheckpointError(f"{path}: tensor {key!r} is {value.layout}, not a dense tensor")
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(
                f"{path}: tensor {key!r} {tuple(value.shape)} is a broadcast view of "
                f"{value.untyped_storage().nbytes():,} stored bytes, not saved weights"
            )


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            _check_declared_sizes({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}, path)
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _is_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _unwrap_torch_object(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
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


def detect_source(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """Name the checkpoint format from its keys; ``keras``/``tf-slim`` are recognised by the reader."""
    metadata = metadata or {}
    if metadata.get("format") == CANONICAL_FORMAT:
        return CANONICAL_FORMAT
    keys = list(tensors)
    if any(key.startswith("backbone.") for key in keys):
        return "mmpretrain"
    stripped = [key.removeprefix("module.") for key in keys]
    if "Conv2d_1a_3x3.conv.weight" in stripped:
        return "torchvision"
    raise CheckpointError(
        "unrecognised checkpoint layout (first keys: "
        f"{keys[:5]}); pass source= one of {', '.join(SOURCES)}"
    )


# ---------------------------------------------------------------------------------------------
# Converters to the torchvision layout


def fold_transform_input(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold torchvision's ``transform_input`` into Conv2d_1a_3x3, so no hidden input transform remains.

    The transform is per-channel affine, x' = a*x + b. Conv2d_1a_3x3 has no padding, so every
    output sees all of b: conv(x') = conv_{W*a}(x) + sum_c b_c * sum(W[:, c]). The weight scales by
    a, and the constant moves into the BN running mean (the conv has no bias). The result is exact
    up to float rounding, and a plain state_dict reproduces the logits (unlike vision#5376).
    """
    out = dict(state_dict)
    weight = out["Conv2d_1a_3x3.conv.weight"].double()
    scale = torch.tensor([s / 0.5 for s in STD], dtype=torch.float64)
    shift = torch.tensor([(m - 0.5) / 0.5 for m in MEAN], dtype=torch.float64)
    constant = (weight.sum(dim=(2, 3)) * shift).sum(dim=1)
    dtype = out["Conv2d_1a_3x3.conv.weight"].dtype
    out["Conv2d_1a_3x3.conv.weight"] = (weight * scale.view(1, 3, 1, 1)).to(dtype)
    mean = out["Conv2d_1a_3x3.bn.running_mean"]
    out["Conv2d_1a_3x3.bn.running_mean"] = (mean.double() - constant).to(mean.dtype)
    return out


def _drop_background_class(state_dict: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """TensorFlow-trained heads have 1001 outputs, index 0 being 'background'; ImageNet-1k has 1000."""
    for prefix in ("fc.", "AuxLogits.fc."):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.shape[0] == 1001:
            state_dict[prefix + "weight"] = weight[1:].clone()
            state_dict[prefix + "bias"] = state_dict[prefix + "bias"][1:].clone()
            notes.append(f"dropped the background row of {prefix}weight (1001 -> 1000 classes)")
    return state_dict


def _class_names_from_mmpretrain_meta(meta: Mapping[str, Any]) -> list[str] | None:
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
    names = names or meta.get("CLASSES")
    return [str(name) for name in names] if isinstance(names, (list, tuple)) and names else None


def _from_mmpretrain(tensors: dict[str, Tensor], meta: Mapping[str, Any], path: str) -> Checkpoint:
    # mmpretrain keeps fc inside the backbone (its ClsHead has no parameters); a LinearClsHead
    # variant stores it as head.fc.
    state = {}
    for key, value in tensors.items():
        if key.startswith("backbone."):
            state[key.removeprefix("backbone.")] = value
        elif key.startswith("head.fc."):
            state[key.removeprefix("head.")] = value
        else:
            state[key] = value  # left for the strict check to report
    return Checkpoint(
        state, "mmpretrain", path, class_names=_class_names_from_mmpretrain_meta(meta), preprocess="mmpretrain"
    )


def _from_torch_layout(tensors: dict[str, Tensor], source: str, path: str) -> Checkpoint:
    notes: list[str] = []
    state = {key.removeprefix("module."): value for key, value in tensors.items()}
    state = _drop_background_class(state, notes)
    preset = "torchvision" if source == "torchvision" else "timm-inception"
    return Checkpoint(state, source, path, preprocess=preset, notes=notes)


def recognise_transform_input_file(path: Path) -> KnownFile | None:
    """The entry of :data:`TRANSFORM_INPUT_FILES` this file is: by its full sha256, or, where only a
    prefix is published, by its exact published name plus that prefix."""
    candidates = [k for k in TRANSFORM_INPUT_FILES if len(k.sha256) == 64 or k.filename == path.name]
    if not candidates:
        return None
    digest = file_digest(path)
    for known in candidates:
        if digest == known.sha256 if len(known.sha256) == 64 else digest.startswith(known.sha256):
            return known
    return None


def _fold_if_expected(checkpoint: Checkpoint, path: Path, transform_input: bool) -> None:
    """Fold transform_input when asked to, or when the file is one known to need it (torchvision's
    Google weights passed by hand would otherwise give wrong logits, silently)."""
    known = None if transform_input else recognise_transform_input_file(path)
    if not (transform_input or known):
        return
    checkpoint.state_dict = fold_transform_input(checkpoint.state_dict)
    checkpoint.transform_input_folded = True
    if known is None:
        checkpoint.notes.append("folded torchvision's transform_input into Conv2d_1a_3x3 (as asked)")
        return
    how = "sha256" if len(known.sha256) == 64 else "name and sha256 prefix"
    note = (f"recognised as {known.description} ({how} {known.sha256[:8]}): folded its transform_input "
            "into Conv2d_1a_3x3")
    checkpoint.notes.append(note)
    log.warning("%s: %s", path, note)


def preset_spec(spec: str, path: str | Path = "") -> tuple[str, int | None]:
    """Split a file's preset, ``"mmpretrain@75"``, into its name and crop; a crop outside CROP_RANGE is
    refused, since preprocessing allocates by it."""
    base, sep, crop = spec.partition("@")
    if base not in PRESETS:  # a typo would otherwise fall back to another preset without a word
        raise CheckpointError(f"{path or 'checkpoint'}: preprocess {spec[:40]!r}: no such preset (known: "
                              f"{', '.join(sorted(PRESETS))})")
    if not sep:
        return base, None
    low, high = CROP_RANGE
    if not (crop.isascii() and crop.isdigit() and len(crop) <= 5 and low <= int(crop) <= high):
        raise CheckpointError(f"{path or 'checkpoint'}: preprocess {spec[:40]!r}: the crop must be a size "
                              f"from {low} to {high}")
    return base, int(crop)


def _from_canonical(tensors: dict[str, Tensor], metadata: Mapping[str, str], path: str) -> Checkpoint:
    try:
        class_names = json.loads(metadata["class_names"]) if metadata.get("class_names") else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its class_names metadata is not JSON ({exc})") from None
    if class_names is not None and not (
        isinstance(class_names, list) and all(isinstance(name, str) for name in class_names)
    ):
        raise CheckpointError(f"{path}: its class_names metadata is not a list of names")
    preprocess = metadata.get("preprocess") or None
    if preprocess:
        preset_spec(preprocess, path)
    pad = metadata.get("count_include_pad", "true")
    if pad not in ("true", "false"):
        raise CheckpointError(f"{path}: its count_include_pad metadata is {pad[:20]!r}, not true or false")
    return Checkpoint(
        dict(tensors),
        metadata.get("source", CANONICAL_FORMAT),
        path,
        class_names=class_names,
        preprocess=preprocess,
        count_include_pad=pad == "true",
    )


def _conv_blocks(with_aux: bool) -> list[str]:
    """BasicConv2d prefixes in creation order, which is also Keras' and TF-slim's creation order."""
    with torch.device("meta"):  # names only: no memory for the 27M parameters
        model = InceptionV3(aux_logits=with_aux, init_weights=False)
    return [name for name, module in model.named_modules() if hasattr(module, "conv") and hasattr(module, "bn")]


def _tf_conv_bn(
    state: dict[str, Tensor], prefix: str, kernel_hwio: np.ndarray, beta: np.ndarray, mean: np.ndarray,
    var: np.ndarray, gamma: np.ndarray | None,
) -> None:
    state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1)))
    state[f"{prefix}.bn.weight"] = torch.from_numpy(gamma.copy()) if gamma is not None else torch.ones(len(beta))
    state[f"{prefix}.bn.bias"] = torch.from_numpy(beta.copy())
    state[f"{prefix}.bn.running_mean"] = torch.from_numpy(mean.copy())
    state[f"{prefix}.bn.running_var"] = torch.from_numpy(var.copy())
    state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)


# --- Keras ----------------------------------------------------------------------------------


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
class _StoredTensor:
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
    if not isinstance(dataset, _StoredTensor):
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


def _keras_checkpoint(layers: Mapping[str, Mapping[str, Any]], path: Path) -> Checkpoint:
    """Keras layers by name ({layer: {role: dataset}}, from any Keras file) mapped onto this layout."""
    convs = sorted((n for n in layers if re.fullmatch(r"conv2d(_\d+)?", n)), key=_layer_number)
    bns = sorted((n for n in layers if re.fullmatch(r"batch_normalization(_\d+)?", n)), key=_layer_number)
    dense = [n for n in layers if "bias" in layers[n] and getattr(layers[n].get("kernel"), "ndim", 0) == 2]
    blocks = _conv_blocks(with_aux=False)
    if len(convs) != len(blocks) or len(bns) != len(blocks):
        raise CheckpointError(
            f"{path}: found {len(convs)} conv and {len(bns)} batch-norm layers, Inception V3 has {len(blocks)}"
        )
    if len(dense) != 1:
        raise CheckpointError(f"{path}: expected one Dense classifier layer, found {len(dense)} (include_top=False?)")
    shapes = _expected_shapes(1000, aux=False)

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
        _tf_conv_bn(state, prefix, weight(conv, "kernel", (kh, kw, inp, out)), weight(bn, "beta", vector),
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
    state = _drop_background_class(state, notes)
    return Checkpoint(
        state, "keras", str(path), preprocess="keras", count_include_pad=count_include_pad_for("keras"), notes=notes
    )


KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"
"""The member of a Keras 3 ``.keras`` archive (a zip) that holds the weights, in the ``.weights.h5`` layout."""


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
            return _keras_checkpoint(_keras_layers(handle, path), path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile) as exc:  # what zipfile and h5py raise on damaged or crafted files
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable Keras file ({type(exc).__name__}: {reason})") from None


# --- TF-slim --------------------------------------------------------------------------------


def tf_slim_to_state_dict(variables: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Map TF-slim ``InceptionV3/...`` variables (name -> array) to this layout.

    Within the stem and each Mixed block the slim variable names sort in the same order as the
    torch modules are created (Branch_0 < Branch_1 ..., Conv2d_0a < Conv2d_0b ...), including
    the irregular ``Conv_1_0c_5x5`` of Mixed_5c, so conv blocks are matched by sorted name.
    """
    scope = "InceptionV3/"
    conv_names = sorted(
        name.removesuffix("/weights")
        for name in variables
        if name.startswith(scope) and name.endswith("/weights")
        and not name.startswith((scope + "AuxLogits/", scope + "Logits/"))
    )
    aux_names = [scope + "AuxLogits/Conv2d_1b_1x1", scope + "AuxLogits/Conv2d_2a_5x5"]
    has_aux = aux_names[0] + "/weights" in variables
    blocks = [b for b in _conv_blocks(with_aux=has_aux) if not b.startswith("AuxLogits.")]
    if len(conv_names) != len(blocks):
        raise CheckpointError(f"found {len(conv_names)} TF-slim conv layers, Inception V3 has {len(blocks)}")
    pairs = list(zip(blocks, conv_names, strict=True))
    if has_aux:
        pairs += [("AuxLogits.conv0", aux_names[0]), ("AuxLogits.conv1", aux_names[1])]
    state: dict[str, Tensor] = {}
    for prefix, tf_name in pairs:
        bn = tf_name + "/BatchNorm/"
        _tf_conv_bn(state, prefix, variables[tf_name + "/weights"], variables[bn + "beta"],
                    variables[bn + "moving_mean"], variables[bn + "moving_variance"], variables.get(bn + "gamma"))
    heads = [("fc", scope + "Logits/Conv2d_1c_1x1")]
    if has_aux:
        heads.append(("AuxLogits.fc", scope + "AuxLogits/Conv2d_2b_1x1"))
    for prefix, tf_name in heads:
        kernel = variables[tf_name + "/weights"]  # 1 x 1 x in x out
        state[prefix + ".weight"] = torch.from_numpy(np.ascontiguousarray(kernel[0, 0].T))
        state[prefix + ".bias"] = torch.from_numpy(variables[tf_name + "/biases"].copy())
    return state


def _is_tf_checkpoint_name(path: Path) -> bool:
    return path.name.endswith((".index", ".ckpt")) or ".data-" in path.name


def _tf_checkpoint_prefix(path: Path) -> str:
    return re.sub(r"(\.index|\.data-\d+-of-\d+)$", "", str(path))


def _tf_checkpoint_files(path: Path) -> list[Path]:
    """The files TensorFlow will open for this checkpoint: its index and every data shard."""
    prefix = Path(_tf_checkpoint_prefix(path))
    return [path, prefix.with_name(prefix.name + ".index"),
            *sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}.data-*"))]


def is_tf_checkpoint_prefix(path: str | os.PathLike) -> bool:
    """A TensorFlow checkpoint named the way TF users name it, by its prefix (``model.ckpt``,
    ``model.ckpt-100000``): no file of that name, but ``PREFIX.index`` beside ``PREFIX.data-*``."""
    path = Path(path)
    return not path.exists() and Path(f"{path}.index").is_file()


#: tf.keras's own checkpoint format (``model.save_weights("dir/name")`` in TensorFlow 2.x without ``.h5``) keys
#: every variable by its place in the object graph, which also records the variable's name.
_KERAS_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_KERAS_CHECKPOINT_KEY = re.compile(r"(layer_with_weights-\d+/)+[a-z_]+/\.ATTRIBUTES/VARIABLE_VALUE")


def _keras_object_graph_layers(reader: Any, shapes: Mapping[str, list[int]],
                               path: Path) -> dict[str, dict[str, Any]]:
    """{layer name: {role: tensor}} of a tf.keras checkpoint, named by the object graph's ``full_name``
    (``conv2d_5/kernel``), which says what the ``layer_with_weights-N`` keys do not."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_KERAS_OBJECT_GRAPH))
    dtypes = reader.get_variable_to_dtype_map()
    layers: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        for attribute in node.attributes:
            key, name = attribute.checkpoint_key, attribute.full_name
            if key not in shapes or not _KERAS_CHECKPOINT_KEY.fullmatch(key) or "/" not in name:
                continue  # optimizer slots, counters and the like
            layer, role = name.rsplit("/", 1)
            layers.setdefault(layer.rsplit("/", 1)[-1], {})[role.split(":")[0]] = _StoredTensor(
                tuple(shapes[key]), np.dtype(dtypes[key].as_numpy_dtype),
                lambda key=key: reader.get_tensor(key))
    return layers


def _from_tf_slim(path: Path) -> Checkpoint:
    """A TensorFlow checkpoint: TF-slim's ``InceptionV3/...`` variables, or tf.keras's object-graph layout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter is not for our users
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a TensorFlow checkpoint needs TensorFlow: pip install tensorflow-cpu "
            "(then convert once with `inceptionv3 convert` and drop it again)"
        ) from None
    from google.protobuf.message import DecodeError

    try:
        reader = tf.train.load_checkpoint(_tf_checkpoint_prefix(path))
        shapes = reader.get_variable_to_shape_map()
        if len(shapes) > 10_000:
            raise CheckpointError(f"{path}: holds {len(shapes):,} variables; Inception V3 has under 1,000")
        _check_declared_sizes({name: tuple(shape) for name, shape in shapes.items()}, path)
        if _KERAS_OBJECT_GRAPH in shapes and any(_KERAS_CHECKPOINT_KEY.fullmatch(name) for name in shapes):
            return _keras_checkpoint(_keras_object_graph_layers(reader, shapes, path), path)
        variables = {name: reader.get_tensor(name) for name in shapes if name.startswith("InceptionV3/")}
        state = tf_slim_to_state_dict(variables)
    except CheckpointError as exc:
        raise exc if str(exc).startswith(f"{path}:") else CheckpointError(f"{path}: {exc}") from None
    except (tf.errors.OpError, DecodeError, KeyError, IndexError, TypeError, ValueError, EOFError) as exc:
        # a damaged data file, a missing variable, a tensor of the wrong rank or type
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable Inception V3 TensorFlow checkpoint ({type(exc).__name__}: "
                              f"{reason})") from None
    notes: list[str] = []
    state = _drop_background_class(state, notes)
    return Checkpoint(
        state, "tf-slim", str(path), preprocess="tf-slim", count_include_pad=count_include_pad_for("tf-slim"),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def read_checkpoint(path: str | Path, source: str | None = None, transform_input: bool = False) -> Checkpoint:
    """Read any supported checkpoint file and convert it to this package's layout.

    ``transform_input=True`` folds torchvision's input transform into a torch-layout file; a file
    recognised as torchvision's Google weights (:data:`TRANSFORM_INPUT_FILES`) gets it folded either way.
    """
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"{path}: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    prefix = is_tf_checkpoint_prefix(path)
    if not path.exists() and not prefix:
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    for part in _tf_checkpoint_files(path) if prefix or _is_tf_checkpoint_name(path) else [path]:
        problem = not_regular(str(part), part.stat().st_mode, "a checkpoint file") if part.exists() else None
        if problem:  # a FIFO would block the first read, and /dev/zero never ends
            raise CheckpointError(f"{part}: {problem}")
    checkpoint, torch_layout = _convert(path, source)
    check_fits(checkpoint.state_dict, str(path))  # before anything is computed from the tensors
    if torch_layout:  # converted files (safetensors) were folded, if at all, when they were written
        checkpoint.transform_input_folded = False
        _fold_if_expected(checkpoint, path, transform_input)
    _warn_if_not_finite(checkpoint.state_dict, path)
    return checkpoint


def _convert(path: Path, source: str | None) -> tuple[Checkpoint, bool]:
    """The file converted to this layout, and whether it is a torchvision/timm layout file."""
    if source == "tf-slim" or _is_tf_checkpoint_name(path) or is_tf_checkpoint_prefix(path):
        return _from_tf_slim(path), False
    if source == "keras" or _is_hdf5(path) or _is_keras_archive(path):
        return _from_keras(path), False
    if _is_safetensors(path):
        tensors, metadata = _read_safetensors(path)
        meta: Mapping[str, Any] = {}
    else:
        tensors, meta = _unwrap_torch_object(_torch_load(path), path)
        _check_torch_tensors(tensors, path)
        metadata = {}
    try:
        detected = source or detect_source(tensors, metadata)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if detected == CANONICAL_FORMAT:
        if metadata.get("format") != CANONICAL_FORMAT:
            raise CheckpointError(
                f"{path}: source='inceptionv3' needs a safetensors file written by `inceptionv3 convert`"
            )
        return _from_canonical(tensors, metadata, str(path)), False
    if detected == "mmpretrain":
        return _from_mmpretrain(tensors, meta, str(path)), False
    if detected in ("torchvision", "timm"):
        return _from_torch_layout(tensors, detected, str(path)), True
    raise CheckpointError(f"{path}: source {detected!r} does not fit this file's format")


def _warn_if_not_finite(state: Mapping[str, Tensor], path: Path) -> None:
    """NaN or inf weights load without complaint and then make every output NaN: say so, naming them."""
    bad = {}
    for key, value in state.items():
        if value.is_floating_point():
            count = int(value.numel() - torch.isfinite(value).sum())
            if count:
                bad[key] = count
    if bad:
        names = ", ".join(f"{key} ({count:,})" for key, count in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(
            f"{path}: {sum(bad.values()):,} non-finite values (NaN or inf) in {len(bad)} tensors: {names}{more}; "
            "the model's outputs will not be usable", RuntimeWarning, stacklevel=3,
        )


def _num_classes(state: Mapping[str, Tensor], path: str) -> int:
    """The head's class count, refused beyond MAX_CLASSES before any model of that size is built."""
    fc = state.get("fc.weight")
    if fc is None:
        raise CheckpointError(f"{path or 'checkpoint'}: no fc.weight, so not an Inception V3 classifier "
                              "(a backbone without its head?)")
    if fc.ndim != 2 or not 1 <= fc.shape[0] <= MAX_CLASSES:
        raise CheckpointError(f"{path or 'checkpoint'}: fc.weight has shape {tuple(fc.shape)}; Inception V3's is "
                              f"(classes, 2048) with 1 to {MAX_CLASSES:,} classes")
    return int(fc.shape[0])


def _expected_shapes(num_classes: int, aux: bool) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, whatever the head's size
        model = InceptionV3(num_classes=num_classes, aux_logits=aux, init_weights=False)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _fit_error(
    expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Tensor], path: str, optional: str = "\0"
) -> CheckpointError | None:
    """Every way ``state_dict`` misses Inception V3's layout, in one message; keys under ``optional`` may be absent."""
    missing = [k for k in expected if k not in state_dict and not k.startswith(optional)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v)
    ]
    if not (missing or unexpected or wrong_shape):
        return None

    def show(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

    parts = [f"{path or 'checkpoint'} does not fit InceptionV3:"]
    if missing:
        parts.append(f"  missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        parts.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if wrong_shape:
        parts.append(f"  wrong shapes ({len(wrong_shape)}): {show(wrong_shape)}")
    return CheckpointError("\n".join(parts))


def check_fits(state_dict: Mapping[str, Tensor], path: str = "") -> None:
    """Refuse a state dict that is not Inception V3 (the auxiliary head optional), checking shapes
    against a model on the meta device, so that no real model is built for a head of any size."""
    expected = _expected_shapes(_num_classes(state_dict, path), aux=True)
    error = _fit_error(expected, state_dict, path, optional="AuxLogits.")
    if error is not None:
        raise error


def load_state_dict_strict(model: InceptionV3, state_dict: Mapping[str, Tensor], path: str = "") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every problem and names the file."""
    error = _fit_error({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict, path)
    if error is not None:
        raise error
    model.load_state_dict(state_dict, strict=True)


def build_model(
    checkpoint: Checkpoint,
    *,
    num_classes: int | None = None,
    aux_logits: bool = False,
    dropout: float = 0.5,
) -> InceptionV3:
    """An InceptionV3 holding the checkpoint's weights; a new ``num_classes`` gets a fresh head.

    The auxiliary head's weights are dropped unless ``aux_logits=True`` (inference never uses it).
    """
    state = dict(checkpoint.state_dict)
    if not aux_logits:
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    elif not checkpoint.has_aux:
        raise CheckpointError(f"{checkpoint.path}: aux_logits=True, but the checkpoint has no AuxLogits weights")
    error = _fit_error(_expected_shapes(checkpoint.num_classes, aux_logits), state, checkpoint.path)
    if error is not None:  # before the model is allocated
        raise error
    model = InceptionV3(
        num_classes=checkpoint.num_classes, aux_logits=aux_logits, dropout=dropout,
        count_include_pad=checkpoint.count_include_pad, init_weights=False,
    )
    load_state_dict_strict(model, state, checkpoint.path)
    if num_classes is not None and num_classes != checkpoint.num_classes:
        model.reset_classifier(num_classes)
    return model


def save_canonical(
    model: InceptionV3,
    path: str | Path,
    *,
    source: str | None = None,
    class_names: list[str] | None = None,
    preprocess: Preprocess | str | None = None,
) -> Path:
    """Write the canonical safetensors file: weights plus what is needed to use them correctly. The preset is
    recorded by name (``mmpretrain@75`` for one rescaled to a 75 crop), which ``read_checkpoint`` resolves.
    What is not given comes from the model's ``weights_info`` when it has one (a ``get_model`` model does)."""
    from safetensors.torch import save_file

    info = getattr(model, "weights_info", None)
    source = source or (info.source if info is not None else "fresh")
    if class_names is None and info is not None and info.class_names:
        class_names = list(info.class_names)
    if preprocess is None and info is not None:
        preprocess = info.preprocess
    path = Path(path)
    if isinstance(preprocess, Preprocess):
        preprocess = preprocess.name
    if preprocess:
        preset_spec(preprocess, path)
    if class_names is not None and len(class_names) != model.num_classes:
        raise CheckpointError(f"{path}: {len(class_names)} class names for a {model.num_classes}-class model")
    metadata = {
        "format": CANONICAL_FORMAT,
        "source": source,
        "count_include_pad": "true" if model.count_include_pad else "false",
        "preprocess": preprocess or "",
        "class_names": json.dumps(class_names) if class_names else "",
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:  # safetensors writes 0600; atomic_path gives the umask's permissions
        save_file(state, str(tmp), metadata=metadata)
    return path
