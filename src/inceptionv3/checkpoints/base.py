"""What every checkpoint reader shares: the limits a file is held to, the :class:`Checkpoint` it becomes, the
:class:`CheckpointFormat` each reader declares, and the checks that a state dict is Inception V3 (made on the meta
device, so that a crafted head of any size costs no memory) before a model is built from it."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..model import InceptionV3

log = logging.getLogger("inceptionv3.checkpoints")

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


MAX_CLASSES = 100_000
"""The largest head a checkpoint may declare. Its fc is then 100,000 x 2048 (820 MB in fp32), the
biggest tensor a file may hold; anything larger is refused before memory is spent on it."""


MAX_TENSOR_NUMEL = 2048 * (MAX_CLASSES + 1)  # TensorFlow heads carry one extra (background) row


MAX_UNPACK_RATIO = 4
"""torch.save stores zip members uncompressed, so a real checkpoint unpacks to its own size; a deflated
one may unpack to this many times its size (float weights barely compress), a zip bomb to thousands."""




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
        return num_classes_of(self.state_dict, self.path)

    @property
    def has_aux(self) -> bool:
        return any(key.startswith("AuxLogits.") for key in self.state_dict)


@dataclass(frozen=True)
class CheckpointFormat:
    """One file format: ``sniff`` tells it from the file's name or first bytes (cheaply, never raising), ``read``
    turns the file into a :class:`Checkpoint` (``source`` as the user gave it, or None), and ``sources`` are the
    ``source=`` values that pick this reader without sniffing. ``read_checkpoint`` asks each format in
    ``checkpoints.FORMATS`` in turn."""

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[[Path, str | None], Checkpoint]
    sources: tuple[str, ...] = ()


def check_declared_sizes(shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """No tensor may be larger than Inception V3's largest (its fc at MAX_CLASSES classes)."""
    for key, shape in shapes.items():
        numel = math.prod(shape)
        if numel > MAX_TENSOR_NUMEL:
            raise CheckpointError(
                f"{path}: tensor {key!r} declares shape {tuple(shape)} ({numel:,} values), more than any "
                f"Inception V3 tensor with up to {MAX_CLASSES:,} classes"
            )


def drop_background_class(state_dict: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """TensorFlow-trained heads have 1001 outputs, index 0 being 'background'; ImageNet-1k has 1000."""
    for prefix in ("fc.", "AuxLogits.fc."):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.shape[0] == 1001:
            state_dict[prefix + "weight"] = weight[1:].clone()
            state_dict[prefix + "bias"] = state_dict[prefix + "bias"][1:].clone()
            notes.append(f"dropped the background row of {prefix}weight (1001 -> 1000 classes)")
    return state_dict


def conv_blocks(with_aux: bool) -> list[str]:
    """BasicConv2d prefixes in creation order, which is also Keras' and TF-slim's creation order."""
    with torch.device("meta"):  # names only: no memory for the 27M parameters
        model = InceptionV3(aux_logits=with_aux, init_weights=False)
    return [name for name, module in model.named_modules() if hasattr(module, "conv") and hasattr(module, "bn")]


def tf_conv_bn(
    state: dict[str, Tensor], prefix: str, kernel_hwio: np.ndarray, beta: np.ndarray, mean: np.ndarray,
    var: np.ndarray, gamma: np.ndarray | None,
) -> None:
    state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1)))
    state[f"{prefix}.bn.weight"] = torch.from_numpy(gamma.copy()) if gamma is not None else torch.ones(len(beta))
    state[f"{prefix}.bn.bias"] = torch.from_numpy(beta.copy())
    state[f"{prefix}.bn.running_mean"] = torch.from_numpy(mean.copy())
    state[f"{prefix}.bn.running_var"] = torch.from_numpy(var.copy())
    state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)


def warn_if_not_finite(state: Mapping[str, Tensor], path: Path) -> None:
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


def num_classes_of(state: Mapping[str, Tensor], path: str) -> int:
    """The head's class count, refused beyond MAX_CLASSES before any model of that size is built."""
    fc = state.get("fc.weight")
    if fc is None:
        raise CheckpointError(f"{path or 'checkpoint'}: no fc.weight, so not an Inception V3 classifier "
                              "(a backbone without its head?)")
    if fc.ndim != 2 or not 1 <= fc.shape[0] <= MAX_CLASSES:
        raise CheckpointError(f"{path or 'checkpoint'}: fc.weight has shape {tuple(fc.shape)}; Inception V3's is "
                              f"(classes, 2048) with 1 to {MAX_CLASSES:,} classes")
    return int(fc.shape[0])


def expected_shapes(num_classes: int, aux: bool) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, whatever the head's size
        model = InceptionV3(num_classes=num_classes, aux_logits=aux, init_weights=False)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def fit_error(
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
    expected = expected_shapes(num_classes_of(state_dict, path), aux=True)
    error = fit_error(expected, state_dict, path, optional="AuxLogits.")
    if error is not None:
        raise error


def load_state_dict_strict(model: InceptionV3, state_dict: Mapping[str, Tensor], path: str = "") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every problem and names the file."""
    error = fit_error({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict, path)
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
    error = fit_error(expected_shapes(checkpoint.num_classes, aux_logits), state, checkpoint.path)
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
