"""The FID network and its feature taps.

FID, KID and IS are defined on one network: TensorFlow's Inception graph of 2015-12-05, which TTUR, pytorch-fid
and torch-fidelity all use. It differs from every later Inception V3 release: 1008 classes, no auxiliary head,
average pools that exclude the padding, and a max pool in Mixed_7c's pool branch. pytorch-fid and torch-fidelity
publish the same converted file (``...-6726825d.pth``) with torchvision's key names, which are also ours.

Taps follow torch-fidelity's names: ``64``, ``192``, ``768`` and ``2048`` are the global average of the map after
maxpool1, maxpool2, Mixed_6e and Mixed_7c; ``spatial`` is sFID's tap (the first 7 channels of Mixed_6d's 1x1
branch, 17 x 17 x 7 flattened in TensorFlow's order, as the ADM evaluator reads ``mixed_6/conv``);
``logits_unbiased`` is the fc without its bias (what IS uses); ``logits`` the full fc. One pass returns any subset
and stops after the deepest tap it needs (:meth:`InceptionV3.forward_intermediates`).
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

LAYERS = ("64", "192", "spatial", "768", "2048", "logits_unbiased", "logits")
"""The taps, shallowest first."""

DIMS = {"64": 64, "192": 192, "spatial": 2023, "768": 768, "2048": 2048, "logits_unbiased": FID_NUM_CLASSES,
        "logits": FID_NUM_CLASSES}

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
    from .checkpoints.torch_file import read_tensors

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    tensors, _ = read_tensors(path)
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


STAGE_OF = {"64": "maxpool1", "192": "maxpool2", "spatial": "Mixed_6d.branch1x1", "768": "Mixed_6e",
            "2048": "Mixed_7c", "logits_unbiased": "Mixed_7c", "logits": "Mixed_7c"}
"""The model tap (see :meth:`InceptionV3.forward_intermediates`) each feature tap is computed from."""

SPATIAL_CHANNELS = 7
"""sFID (Nash et al. 2021) keeps the first 7 of Mixed_6d.branch1x1's 192 channels: 17 x 17 x 7 = 2023 values."""


def spatial_features(branch1x1: Tensor) -> Tensor:
    """sFID's features from the N x 192 x 17 x 17 map: the first 7 channels flattened in (h, w, c) order, as the
    TensorFlow graph (NHWC) lays them out. A (c, h, w) flatten gives the same distance between two sets computed
    alike, but not against statistics published by the ADM evaluator."""
    return branch1x1[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)


def forward_taps(model: InceptionV3, x: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
    """The requested taps of ``model`` (any :class:`InceptionV3`) for a prepared batch, in one pass that stops
    after the deepest one needed. Logits taps need the model's own fc (1008 classes for the FID network)."""
    wanted = check_layers(layers)
    maps = model.forward_intermediates(x, [STAGE_OF[layer] for layer in wanted])
    out: dict[str, Tensor] = {}
    for layer in wanted:
        found = maps[STAGE_OF[layer]]
        if layer == "spatial":
            out[layer] = spatial_features(found)
        elif layer in ("64", "192", "768"):
            out[layer] = torch.flatten(F.adaptive_avg_pool2d(found, 1), 1)
    if "Mixed_7c" in maps:
        pooled = model.forward_head(maps["Mixed_7c"], pre_logits=True)
        # N x 2048
        out["2048"] = pooled
        if "logits_unbiased" in wanted:
            # As torch-fidelity: the bias is added to the unbiased product, so both taps round as theirs do.
            out["logits_unbiased"] = pooled.mm(model.fc.weight.T)
            out["logits"] = out["logits_unbiased"] + model.fc.bias.unsqueeze(0)
        elif "logits" in wanted:
            out["logits"] = model.fc(pooled)
        # N x num_classes
    return {layer: out[layer] for layer in wanted}


__all__ = ["DIMS", "FID_SHA256", "FIDNetwork", "LAYERS", "check_layers",
           "convert_pytorch_fid_state_dict", "fid_inception_v3", "forward_taps", "load_fid_network",
           "locate_fid_weights", "read_fid_weights", "spatial_features"]
