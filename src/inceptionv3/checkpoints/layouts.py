"""The layouts a dict of tensors may come in (mmpretrain's, torchvision's and timm's, and this package's canonical
safetensors), converted to this package's; torchvision's ``transform_input``, folded into the first conv; and the
canonical file, which records everything needed to use its weights correctly."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, InputError
from ..files import atomic_path, file_digest
from ..imagenet import MEAN, STD
from ..model import InceptionV3
from ..preprocess import Preprocess, PresetRef
from .base import CANONICAL_FORMAT, SOURCES, Checkpoint, drop_background_class, log


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
    state = drop_background_class(state, notes)
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


def fold_if_expected(checkpoint: Checkpoint, path: Path, transform_input: bool) -> None:
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


def check_preset(spec: str, path: str | Path) -> None:
    """A file's preset reference (``"mmpretrain@75"``) must name a preset at a sane crop: refused here, when the
    file is read, rather than on first use."""
    try:
        PresetRef.parse(spec).resolve()
    except InputError as exc:
        raise CheckpointError(f"{path or 'checkpoint'}: {exc}") from None


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
        check_preset(preprocess, path)
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


def from_tensors(tensors: dict[str, Tensor], path: Path, source: str | None, metadata: Mapping[str, str],
                 meta: Mapping[str, Any]) -> Checkpoint:
    """A dict of tensors in any of these layouts (``source``, or detected from the keys and ``metadata``) as a
    :class:`Checkpoint`. A torchvision or timm layout comes back with ``transform_input_folded=False``: whether
    to fold it is decided from the file (``fold_if_expected``)."""
    try:
        detected = source or detect_source(tensors, metadata)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if detected == CANONICAL_FORMAT:
        if metadata.get("format") != CANONICAL_FORMAT:
            raise CheckpointError(
                f"{path}: source='inceptionv3' needs a safetensors file written by `inceptionv3 convert`"
            )
        return _from_canonical(tensors, metadata, str(path))
    if detected == "mmpretrain":
        return _from_mmpretrain(tensors, meta, str(path))
    if detected in ("torchvision", "timm"):
        checkpoint = _from_torch_layout(tensors, detected, str(path))
        checkpoint.transform_input_folded = False
        return checkpoint
    raise CheckpointError(f"{path}: source {detected!r} does not fit this file's format")


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
        check_preset(preprocess, path)
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
