"""TensorFlow checkpoints (an ``.index`` and its ``.data-*`` shards, often named by their prefix): TF-slim's
``InceptionV3/...`` variables, or tf.keras's object-graph layout. Needs TensorFlow, for reading only."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..files import not_regular
from .base import (
    Checkpoint,
    CheckpointFormat,
    check_declared_sizes,
    conv_blocks,
    count_include_pad_for,
    drop_background_class,
    tf_conv_bn,
)
from .keras import StoredTensor, keras_checkpoint


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
    blocks = [b for b in conv_blocks(with_aux=has_aux) if not b.startswith("AuxLogits.")]
    if len(conv_names) != len(blocks):
        raise CheckpointError(f"found {len(conv_names)} TF-slim conv layers, Inception V3 has {len(blocks)}")
    pairs = list(zip(blocks, conv_names, strict=True))
    if has_aux:
        pairs += [("AuxLogits.conv0", aux_names[0]), ("AuxLogits.conv1", aux_names[1])]
    state: dict[str, Tensor] = {}
    for prefix, tf_name in pairs:
        bn = tf_name + "/BatchNorm/"
        tf_conv_bn(state, prefix, variables[tf_name + "/weights"], variables[bn + "beta"],
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


def tf_checkpoint_files(path: Path) -> list[Path]:
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
            layers.setdefault(layer.rsplit("/", 1)[-1], {})[role.split(":")[0]] = StoredTensor(
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
        check_declared_sizes({name: tuple(shape) for name, shape in shapes.items()}, path)
        if _KERAS_OBJECT_GRAPH in shapes and any(_KERAS_CHECKPOINT_KEY.fullmatch(name) for name in shapes):
            return keras_checkpoint(_keras_object_graph_layers(reader, shapes, path), path)
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
    state = drop_background_class(state, notes)
    return Checkpoint(
        state, "tf-slim", str(path), preprocess="tf-slim", count_include_pad=count_include_pad_for("tf-slim"),
        notes=notes,
    )


def _read(path: Path, source: str | None) -> Checkpoint:
    for part in tf_checkpoint_files(path):
        problem = not_regular(str(part), part.stat().st_mode, "a checkpoint file") if part.exists() else None
        if problem:  # a FIFO would block the first read, and /dev/zero never ends
            raise CheckpointError(f"{part}: {problem}")
    return _from_tf_slim(path)


def _sniff(path: Path) -> bool:
    return _is_tf_checkpoint_name(path) or is_tf_checkpoint_prefix(path)


FORMAT = CheckpointFormat("tensorflow", sniff=_sniff, read=_read, sources=("tf-slim",))
