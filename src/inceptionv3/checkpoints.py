"""Read every public Inception V3 checkpoint format into one state-dict layout (torchvision's).

Each source gets a converter that returns a :class:`Checkpoint`; :func:`build_model` then loads it
strictly. Files are opened only with ``torch.load(weights_only=True)``, safetensors or h5py, so a
checkpoint can never run code on load.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError
from .model import InceptionV3

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
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


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

    @property
    def num_classes(self) -> int:
        return int(self.state_dict["fc.weight"].shape[0])

    @property
    def has_aux(self) -> bool:
        return any(key.startswith("AuxLogits.") for key in self.state_dict)


# ---------------------------------------------------------------------------------------------
# Reading files


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects beyond tensors and plain "
            f"containers, which could run code ({str(exc).splitlines()[0]}). Re-save its state_dict "
            "or convert it from a trusted environment."
        ) from None
    except Exception as exc:  # torch.load raises many types on junk (struct.error, EOFError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
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
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
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
    scale = torch.tensor([s / 0.5 for s in _IMAGENET_STD], dtype=torch.float64)
    shift = torch.tensor([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN], dtype=torch.float64)
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
    if isinstance(dataset_meta, Mapping) and dataset_meta.get("classes"):
        return [str(name) for name in dataset_meta["classes"]]
    if meta.get("CLASSES"):
        return [str(name) for name in meta["CLASSES"]]
    return None


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


def _from_torch_layout(tensors: dict[str, Tensor], source: str, path: str, transform_input: bool) -> Checkpoint:
    notes: list[str] = []
    state = {key.removeprefix("module."): value for key, value in tensors.items()}
    state = _drop_background_class(state, notes)
    if transform_input:
        state = fold_transform_input(state)
        notes.append("folded torchvision's transform_input into Conv2d_1a_3x3")
    preset = "torchvision" if source == "torchvision" else "timm-inception"
    return Checkpoint(state, source, path, preprocess=preset, notes=notes)


def _from_canonical(tensors: dict[str, Tensor], metadata: Mapping[str, str], path: str) -> Checkpoint:
    class_names = json.loads(metadata["class_names"]) if metadata.get("class_names") else None
    return Checkpoint(
        dict(tensors),
        metadata.get("source", CANONICAL_FORMAT),
        path,
        class_names=class_names,
        preprocess=metadata.get("preprocess") or None,
        count_include_pad=metadata.get("count_include_pad", "true") == "true",
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


def _keras3_creation_name(name: str) -> str:
    kind = re.fullmatch(r"(conv2d|batch_normalization)(_\d+)?", name)
    if not kind:
        return name
    position = _layer_number(name)
    if position >= len(_KERAS3_TOPOLOGICAL_TO_CREATION):
        raise CheckpointError(f"layer {name}: more layers than Inception V3 has")
    return f"{kind.group(1)}_{_KERAS3_TOPOLOGICAL_TO_CREATION[position]}"


def _keras_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight role: array}} from any of the three Keras HDF5 layouts."""
    import h5py

    def role(weight_name: str) -> str:
        return weight_name.rsplit("/", 1)[-1].split(":")[0]

    layers: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as handle:
        if "layers" in handle and "layer_names" not in handle.attrs:  # Keras 3 .weights.h5
            for name, group in handle["layers"].items():
                if "vars" not in group or not len(group["vars"]):
                    continue
                arrays = [group["vars"][str(i)][()] for i in range(len(group["vars"]))]
                if name.startswith("batch_normalization"):
                    roles = ["beta", "moving_mean", "moving_variance"]
                    if len(arrays) == 4:
                        roles = ["gamma"] + roles
                elif len(arrays) == 2:
                    roles = ["kernel", "bias"]
                else:
                    roles = ["kernel"]
                layers[_keras3_creation_name(name)] = dict(zip(roles, arrays, strict=True))
            return layers
        # Keras 2 weights files and legacy full-model files share the "layer_names" layout.
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in root.attrs:
            raise CheckpointError(f"{path}: an HDF5 file, but not a Keras model or weights file")
        for raw_name in root.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            group = root[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]]
            if weight_names:
                layers[name] = {role(w): group[w][()] for w in weight_names}
    return layers


def _from_keras(path: Path) -> Checkpoint:
    try:
        layers = _keras_layers(path)
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable Keras HDF5 file ({exc})") from None
    convs = sorted((n for n in layers if re.fullmatch(r"conv2d(_\d+)?", n)), key=_layer_number)
    bns = sorted((n for n in layers if re.fullmatch(r"batch_normalization(_\d+)?", n)), key=_layer_number)
    dense = [n for n in layers if "bias" in layers[n] and layers[n]["kernel"].ndim == 2]
    blocks = _conv_blocks(with_aux=False)
    if len(convs) != len(blocks) or len(bns) != len(blocks):
        raise CheckpointError(
            f"{path}: found {len(convs)} conv and {len(bns)} batch-norm layers, Inception V3 has {len(blocks)}"
        )
    state: dict[str, Tensor] = {}
    for prefix, conv, bn in zip(blocks, convs, bns, strict=True):
        w = layers[bn]
        _tf_conv_bn(state, prefix, layers[conv]["kernel"], w["beta"], w["moving_mean"], w["moving_variance"],
                    w.get("gamma"))
    notes = ["mapped Keras layers by creation order (their names are auto-numbered)"]
    if len(dense) != 1:
        raise CheckpointError(f"{path}: expected one Dense classifier layer, found {len(dense)} (include_top=False?)")
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(layers[dense[0]]["kernel"].T))
    state["fc.bias"] = torch.from_numpy(layers[dense[0]]["bias"].copy())
    state = _drop_background_class(state, notes)
    return Checkpoint(
        state, "keras", str(path), preprocess="keras", count_include_pad=count_include_pad_for("keras"), notes=notes
    )


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


def _from_tf_slim(path: Path) -> Checkpoint:
    try:
        import tensorflow as tf  # noqa: F401  (only needed to read TF's checkpoint format)
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a TF-slim checkpoint needs TensorFlow: pip install tensorflow-cpu "
            "(then convert once with `inceptionv3 convert` and drop it again)"
        ) from None
    prefix = str(path).removesuffix(".index").removesuffix(".data-00000-of-00001")
    reader = tf.train.load_checkpoint(prefix)
    variables = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    notes: list[str] = []
    state = _drop_background_class(tf_slim_to_state_dict(variables), notes)
    return Checkpoint(
        state, "tf-slim", str(path), preprocess="tf-slim", count_include_pad=count_include_pad_for("tf-slim"),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def read_checkpoint(path: str | Path, source: str | None = None, transform_input: bool = False) -> Checkpoint:
    """Read any supported checkpoint file and convert it to this package's layout."""
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"{path}: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if source == "tf-slim" or path.name.endswith((".index", ".ckpt")) or ".data-" in path.name:
        return _from_tf_slim(path)
    if source == "keras" or _is_hdf5(path):
        return _from_keras(path)
    if _is_safetensors(path):
        tensors, metadata = _read_safetensors(path)
        meta: Mapping[str, Any] = {}
    else:
        tensors, meta = _unwrap_torch_object(_torch_load(path), path)
        metadata = {}
    detected = source or detect_source(tensors, metadata)
    if detected == CANONICAL_FORMAT:
        if metadata.get("format") != CANONICAL_FORMAT:
            raise CheckpointError(
                f"{path}: source='inceptionv3' needs a safetensors file written by `inceptionv3 convert`"
            )
        return _from_canonical(tensors, metadata, str(path))
    if detected == "mmpretrain":
        return _from_mmpretrain(tensors, meta, str(path))
    if detected in ("torchvision", "timm"):
        return _from_torch_layout(tensors, detected, str(path), transform_input)
    raise CheckpointError(f"{path}: source {detected!r} does not fit this file's format")


def load_state_dict_strict(model: InceptionV3, state_dict: Mapping[str, Tensor], path: str = "") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every problem and names the file."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{path or 'checkpoint'} does not fit InceptionV3:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if wrong_shape:
            parts.append(f"  wrong shapes ({len(wrong_shape)}): {show(wrong_shape)}")
        raise CheckpointError("\n".join(parts))
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
    source: str,
    class_names: list[str] | None = None,
    preprocess: str | None = None,
) -> Path:
    """Write the canonical safetensors file: weights plus what is needed to use them correctly."""
    from safetensors.torch import save_file

    path = Path(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path
