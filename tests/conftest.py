"""Shared fixtures: the real photos and realistic random weights.

A fresh random Inception V3 saturates, so comparisons on it prove little. Here the BN running
statistics are measured on real photos, which makes every layer's activations realistic.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


#: Real photos, ImageNet class lists and labels, and small training sets, all redistributable; tests/data/README.md
#: names each file's source and licence. A fresh clone has everything the tests read.
SHARED_DATA = REPO / "tests" / "data"


def pytest_configure(config):
    """Downloads and cached exports go to a fresh folder, never the user's own cache."""
    import tempfile

    os.environ["INCEPTIONV3_HOME"] = tempfile.mkdtemp(prefix="inceptionv3-home-")


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(os.environ["INCEPTIONV3_HOME"], ignore_errors=True)  # exports are ~100 MB each
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def photo_paths() -> list[Path]:
    paths = sorted((SHARED_DATA / "images").glob("*.*"))
    paths = [p for p in paths if p.suffix.lower() in (".jpg", ".png", ".bmp")]
    if not paths:
        raise FileNotFoundError(f"no real photos under {SHARED_DATA / 'images'}; set INCEPTIONV3_SHARED_DATA")
    return paths


def load_rgb01(path: Path, size: int = 299) -> np.ndarray:
    """Square-crop and resize with Pillow only, independent of the package's preprocessing."""
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


@pytest.fixture(scope="session")
def photos01() -> np.ndarray:
    """Six real photos, N x H x W x 3 in [0, 1]."""
    paths = photo_paths()
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, 6).astype(int)]
    return np.stack([load_rgb01(p) for p in picks])


@pytest.fixture(scope="session")
def imagenet_batch(photos01) -> torch.Tensor:
    """The photos normalised with ImageNet mean/std, N x 3 x 299 x 299."""
    return torch.from_numpy(((photos01 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="session")
def inception_batch(photos01) -> torch.Tensor:
    """The photos scaled to [-1, 1], as TensorFlow-trained weights expect."""
    return torch.from_numpy((photos01 * 2 - 1).transpose(0, 3, 1, 2).copy())


def calibrate(model: torch.nn.Module, batch: torch.Tensor, seed: int = 0, affine: bool = True) -> torch.nn.Module:
    """Random affine BN parameters, then running statistics measured on ``batch``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            if affine:
                module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
            module.bias.data = torch.randn(module.num_features, generator=generator) * 0.2
            module.momentum = None  # cumulative average: the stats of exactly this batch
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


PT_NAME = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's name for the FID weights file."""


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory):
    """Seeded random FID network, BN calibrated on three real photos (at 160 px, to save time), saved as the 2019
    file was: a plain OrderedDict in torch's legacy (pre-zip) format, without num_batches_tracked."""
    photos = np.stack([load_rgb01(p, size=160) for p in photo_paths()[:3]])
    batch = torch.from_numpy((photos * 2 - 1).transpose(0, 3, 1, 2).copy())
    torch.manual_seed(0)  # torch's default init (trunc_normal over 24M weights is slow); the BN calibration rescales
    from inceptionv3.model import InceptionV3

    model = InceptionV3(num_classes=1008, count_include_pad=False, mixed_7c_pool="max", init_weights=False)
    model = calibrate(model, batch)
    model.fc.bias.data = torch.randn(1008) * 0.5  # so that logits and logits_unbiased differ
    state = collections.OrderedDict((k, v) for k, v in model.state_dict().items()
                                    if not k.endswith("num_batches_tracked"))
    path = tmp_path_factory.mktemp("fid-weights") / PT_NAME
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the tests never listen anywhere else)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """The command that runs ``args`` (``"-m", "inceptionv3", ...`` or a script) under torchrun on this machine:
    rendezvous on 127.0.0.1 at a free port. Run it with ``TORCHRUN_ENV``."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", *args]


#: One thread per process (two processes share the two cores) and gloo on the loopback interface.
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture
def model_and_batch(trained_like_checkpoint, tmp_path, monkeypatch):
    """The trained-like model, with its own empty cache, and the demo photo's 10-crop views as a batch."""
    from inceptionv3 import get_model
    from inceptionv3.export import sample_batch

    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "home"))
    model = get_model(trained_like_checkpoint)
    return model, sample_batch(model.weights_info.preprocess)


def wait_ready(base: str, deadline_s: float = 120.0) -> None:
    """Poll a server's /readyz until it answers 200, failing the test after ``deadline_s``."""
    import time

    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not become ready within {deadline_s} s")


def max_abs_diff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


@pytest.fixture(scope="session")
def trained_like_checkpoint(tmp_path_factory, imagenet_batch) -> Path:
    """An mmpretrain-layout checkpoint whose predictions differ from photo to photo: calibrated BN and a
    head scaled so that the softmax is neither flat nor one-hot. Class names come from classes.tsv."""
    from inceptionv3 import InceptionV3

    torch.manual_seed(0)
    model = calibrate(InceptionV3(), imagenet_batch)
    model.fc.weight.data *= 20
    classes = [line.split("\t")[2] for line in (SHARED_DATA / "imagenet" / "classes.tsv").read_text().splitlines()
               if line and not line.startswith("index")]
    path = tmp_path_factory.mktemp("weights") / "mmpretrain_layout.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "meta": {"dataset_meta": {"classes": classes}}}, path)
    return path


def photo_labels() -> dict[str, list[int]]:
    """file name -> acceptable ImageNet indices, read from the shared data README's table (first = primary)."""
    import re

    labels = {}
    for line in (SHARED_DATA / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and re.fullmatch(r"[\w.]+\.(jpg|png|bmp)", cells[1]):
            labels[cells[1]] = [int(n) for n in re.findall(r"\b(\d{1,3})\b", cells[2])]
    return labels


def independent_scores(checkpoint: Path, paths: list[Path]) -> dict[Path, np.ndarray]:
    """Softmax scores computed without the package: the checkpoint's raw state dict in torchvision's Inception3
    (the same layer names), fed tensors built from cv2 calls alone as mmpretrain's pipeline builds them."""
    import cv2
    import torchvision

    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    reference.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()})
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    scores = {}
    for path in paths:
        bgr = cv2.imread(str(path))
        h, w = bgr.shape[:2]
        size = (342, int(342 * h / w)) if w < h else (int(342 * w / h), 342)
        resized = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        top, left = int(round((resized.shape[0] - 299) / 2)), int(round((resized.shape[1] - 299) / 2))
        crop = torch.from_numpy(resized[top:top + 299, left:left + 299, ::-1].copy()).permute(2, 0, 1).float()
        with torch.no_grad():
            scores[path] = torch.softmax(reference(((crop - mean) / std)[None]), dim=1)[0].numpy()
    return scores


def pytest_terminal_summary(terminalreporter):
    """The docs blocks that carry a reason not to run, counted and listed, so that none is skipped silently."""
    module = sys.modules.get("test_docs")
    if module is not None:
        terminalreporter.write_line(module.not_run_summary())
