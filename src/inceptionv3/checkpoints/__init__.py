"""Read every public Inception V3 checkpoint format into one state-dict layout (torchvision's).

One reader per format, each a :class:`CheckpointFormat` in :data:`FORMATS`; :func:`read_checkpoint` asks them in
turn and :func:`build_model` then loads the result strictly. Files are opened only with
``torch.load(weights_only=True)``, safetensors, h5py or TensorFlow's checkpoint reader, so a checkpoint can never
run code on load.

A file may not declare more than Inception V3 holds: zip members may not unpack to much more than the file's own
size, tensor and dataset shapes are checked before their data is read (safetensors, HDF5, TensorFlow) or before
anything is computed from them (torch), the head may have at most :data:`MAX_CLASSES` classes, and a preset's crop
must lie in ``preprocess.CROP_RANGE``. So a crafted file of a few megabytes gets a one-line :class:`CheckpointError`
instead of exhausting memory.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..files import not_regular
from . import keras, safetensors_file, tf_checkpoint, torch_file
from .base import (
    CANONICAL_FORMAT,
    MAX_CLASSES,
    MAX_TENSOR_NUMEL,
    SOURCES,
    Checkpoint,
    CheckpointFormat,
    build_model,
    check_fits,
    count_include_pad_for,
    load_state_dict_strict,
    warn_if_not_finite,
)
from .layouts import (
    TORCHVISION_GOOGLE_SHA256,
    TRANSFORM_INPUT_FILES,
    KnownFile,
    check_preset,
    detect_source,
    fold_if_expected,
    fold_transform_input,
    recognise_transform_input_file,
    save_canonical,
)
from .tf_checkpoint import is_tf_checkpoint_prefix, tf_slim_to_state_dict

#: The readers, asked in this order; the PyTorch reader claims whatever the others did not.
FORMATS: tuple[CheckpointFormat, ...] = (
    tf_checkpoint.FORMAT,
    keras.FORMAT,
    safetensors_file.FORMAT,
    torch_file.FORMAT,
)


def format_for(path: Path, source: str | None = None) -> CheckpointFormat:
    """The reader ``source`` names, else the first whose ``sniff`` recognises the file."""
    return next(f for f in FORMATS if source in f.sources or f.sniff(path))


def read_checkpoint(path: str | Path, source: str | None = None, transform_input: bool = False) -> Checkpoint:
    """Read any supported checkpoint file and convert it to this package's layout.

    ``transform_input=True`` folds torchvision's input transform into a torch-layout file; a file
    recognised as torchvision's Google weights (:data:`TRANSFORM_INPUT_FILES`) gets it folded either way.
    """
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"{path}: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if not path.exists() and not is_tf_checkpoint_prefix(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    problem = not_regular(str(path), path.stat().st_mode, "a checkpoint file") if path.exists() else None
    if problem:  # a FIFO would block the first read, and /dev/zero never ends
        raise CheckpointError(f"{path}: {problem}")
    checkpoint = format_for(path, source).read(path, source)
    check_fits(checkpoint.state_dict, str(path))  # before anything is computed from the tensors
    if checkpoint.transform_input_folded is False:  # a torchvision or timm layout: fold when asked or known
        fold_if_expected(checkpoint, path, transform_input)
    warn_if_not_finite(checkpoint.state_dict, path)
    return checkpoint


__all__ = ["CANONICAL_FORMAT", "FORMATS", "MAX_CLASSES", "MAX_TENSOR_NUMEL", "SOURCES",
           "TORCHVISION_GOOGLE_SHA256", "TRANSFORM_INPUT_FILES", "Checkpoint", "CheckpointError", "CheckpointFormat",
           "KnownFile", "build_model", "check_fits", "count_include_pad_for", "detect_source", "fold_transform_input",
           "format_for", "is_tf_checkpoint_prefix", "load_state_dict_strict", "check_preset", "read_checkpoint",
           "recognise_transform_input_file", "save_canonical", "tf_slim_to_state_dict"]
