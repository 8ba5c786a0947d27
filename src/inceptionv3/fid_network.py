"""The FID network and its feature taps.

FID, KID and IS are defined on one network: TensorFlow's Inception graph of 2015-12-05, which TTUR, pytorch-fid
and torch-fidelity all use. It differs from every later Inception V3 release: 1008 classes, no auxiliary head,
average pools that exclude the padding, and a max pool in Mixed_7c's pool branch. pytorch-fid and torch-fidelity
publish the same converted file (``...-6726825d.pth``) with torchvision's key names, which are also ours.

Taps follow torch-fidelity's names: ``64``, ``192``, ``768`` and ``2048`` are the global average of the map after
maxpool1, maxpool2, Mixed_6e and Mixed_7c; ``logits_unbiased`` is the fc without its bias (what IS uses);
``logits`` the full fc. One pass returns any subset and stops after the deepest tap it needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import weights
from .errors import CheckpointError, DownloadError, InputError
from .files import file_digest
from .model import InceptionV3

log = logging.getLogger(__name__)

FID_NUM_CLASSES = 1008

LAYERS = ("64", "192", "768", "2048", "logits_unbiased", "logits")
"""The taps, shallowest first."""

DIMS = {"64": 64, "192": 192, "768": 768, "2048": 2048, "logits_unbiased": FID_NUM_CLASSES, "logits": FID_NUM_CLASSES}

FID_SHA256 = weights.FID_SHA256
"""A copy found in torch's hub folder or our cache is used only with this digest (the zoo entry's)."""


def fid_inception_v3() -> InceptionV3:
    """The 2015-12-05 graph with our module names, uninitialised (load weights into it)."""
    return InceptionV3(num_classes=FID_NUM_CLASSES, aux_logits=False, count_include_pad=False,
                       init_weights=False, mixed_7c_pool="max").eval()


def convert_pytorch_fid_state_dict(state: Mapping[str, Tensor], path: str = "") -> dict[str, Tensor]:
    """pytorch-fid's / torch-fidelity's file layout to ours. Both use torchvision's names, which are ours, so this
    only checks: every tensor present with its shape, nothing extra, BN counters filled in where a 2019 file has
    none. A ``module.`` prefix (a DataParallel save) is dropped."""
    where = f"{path}: " if path else ""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{where}not a state dict of tensors (the FID weights file holds one)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = fid_inception_v3().state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}not the FID Inception layout: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    converted = {}
    for key, reference in expected.items():
        value = state.get(key)
        if value is None:  # num_batches_tracked, absent from files saved by older torch
            value = torch.zeros((), dtype=torch.long)
        if tuple(value.shape) != tuple(reference.shape):
            raise CheckpointError(
                f"{where}{key} has shape {tuple(value.shape)}, the FID network needs {tuple(reference.shape)}"
            )
        converted[key] = value.to(reference.dtype) if value.is_floating_point() else value
    return converted


def read_fid_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The file's tensors, read with ``torch.load(weights_only=True)``: never unpickles code, and reads both the
    legacy (pre-1.6) format the published file is in and the zip format."""
    from .checkpoints import _check_torch_tensors, _torch_load, _unwrap_torch_object

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    tensors, _ = _unwrap_torch_object(_torch_load(path), path)
    _check_torch_tensors(tensors, path)
    return convert_pytorch_fid_state_dict(tensors, str(path))


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def locate_fid_weights(download: bool = True) -> Path:
    """A verified copy of the FID weights (zoo entry ``inception-2015-12-05_fid``): one already in
    ``$TORCH_HOME/hub/checkpoints`` under either published name (where pytorch-fid and torch-fidelity put it),
    or in our cache, or downloaded into our cache."""
    entry = weights.get_entry(weights.FID_MODEL)
    for folder in (_hub_checkpoints(), weights.cache_dir()):
        for name in (f.filename for f in entry.files):
            candidate = folder / name
            if candidate.is_file():
                if weights.is_verified(candidate, f"sha256:{FID_SHA256}"):  # hashed once, then its marker
                    return candidate
                log.warning("%s: sha256 %s is not the published %s; ignored (pass it with --weights to use it)",
                            candidate, file_digest(candidate)[:16], FID_SHA256[:16])
    if not download:
        raise DownloadError(f"no FID weights in {_hub_checkpoints()} or {weights.cache_dir()}")
    path, _ = weights.download_weights(entry)
    return path


@dataclass
class FIDNetwork:
    """The loaded network and what identifies its weights in saved statistics."""

    model: InceptionV3
    weights_path: str
    weights_sha256: str


def load_fid_network(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDNetwork:
    """The FID network with the published weights, or with ``weights`` (a file in the same layout)."""
    path = Path(weights) if weights is not None else locate_fid_weights()
    model = fid_inception_v3()
    model.load_state_dict(read_fid_weights(path), strict=True)
    model.requires_grad_(False)
    return FIDNetwork(model.to(device).eval(), str(path), file_digest(path))


def check_layers(layers: Iterable[str]) -> list[str]:
    """The requested taps, validated, in their given order without repeats."""
    chosen = list(dict.fromkeys(str(layer) for layer in layers))
    if not chosen:
        raise InputError("no feature layers requested")
    unknown = [layer for layer in chosen if layer not in LAYERS]
    if unknown:
        raise InputError(f"unknown feature layer(s) {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    return chosen


def _pooled(x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def forward_taps(model: InceptionV3, x: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
    """The requested taps of ``model`` (any :class:`InceptionV3`) for a prepared batch, in one pass that stops
    after the deepest one needed. Logits taps need the model's own fc (1008 classes for the FID network)."""
    wanted = set(check_layers(layers))
    deepest = max(LAYERS.index(layer) for layer in wanted)
    out: dict[str, Tensor] = {}
    # N x 3 x 299 x 299
    x = model.Conv2d_1a_3x3(x)
    # N x 32 x 149 x 149
    x = model.Conv2d_2a_3x3(x)
    # N x 32 x 147 x 147
    x = model.Conv2d_2b_3x3(x)
    # N x 64 x 147 x 147
    x = model.maxpool1(x)
    # N x 64 x 73 x 73
    if "64" in wanted:
        out["64"] = _pooled(x)
    if deepest == 0:
        return out
    x = model.Conv2d_3b_1x1(x)
    # N x 80 x 73 x 73
    x = model.Conv2d_4a_3x3(x)
    # N x 192 x 71 x 71
    x = model.maxpool2(x)
    # N x 192 x 35 x 35
    if "192" in wanted:
        out["192"] = _pooled(x)
    if deepest == 1:
        return out
    x = model.Mixed_5b(x)
    # N x 256 x 35 x 35
    x = model.Mixed_5c(x)
    # N x 288 x 35 x 35
    x = model.Mixed_5d(x)
    # N x 288 x 35 x 35
    x = model.Mixed_6a(x)
    # N x 768 x 17 x 17
    x = model.Mixed_6b(x)
    # N x 768 x 17 x 17
    x = model.Mixed_6c(x)
    # N x 768 x 17 x 17
    x = model.Mixed_6d(x)
    # N x 768 x 17 x 17
    x = model.Mixed_6e(x)
    # N x 768 x 17 x 17
    if "768" in wanted:
        out["768"] = _pooled(x)
    if deepest == 2:
        return out
    x = model._7a_to_7c(x)
    # N x 2048 x 8 x 8
    x = model.forward_head(x, pre_logits=True)
    # N x 2048
    if "2048" in wanted:
        out["2048"] = x
    if deepest == 3:
        return out
    if "logits_unbiased" in wanted:
        # As torch-fidelity: the bias is added to the unbiased product, so both taps round as theirs do.
        x = x.mm(model.fc.weight.T)
        # N x num_classes
        out["logits_unbiased"] = x
        if "logits" in wanted:
            out["logits"] = x + model.fc.bias.unsqueeze(0)
        return out
    out["logits"] = model.fc(x)
    # N x num_classes
    return out


__all__ = ["DIMS", "FID_SHA256", "FIDNetwork", "LAYERS", "check_layers",
           "convert_pytorch_fid_state_dict", "fid_inception_v3", "forward_taps", "load_fid_network",
           "locate_fid_weights", "read_fid_weights"]
