"""The weight zoo, its verified download, and ``get_model``.

Each :class:`WeightsEntry` carries what is needed to use its weights correctly: the files (in
order of preference, each with its own format), the preprocessing preset, the class names and the
published metrics. Downloads are streamed to a temporary file, hash-checked, and only then renamed
into the cache, so a partial or wrong file is never used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import torch

from .checkpoints import Checkpoint, CheckpointError, build_model, count_include_pad_for, read_checkpoint
from .errors import DownloadError, UnknownModelError
from .model import InceptionV3
from .preprocess import PRESETS, Preprocess

log = logging.getLogger(__name__)

PARAMS = 23_834_568
PARAMS_WITH_AUX = 27_161_264
MACS_TORCHVISION = 5_713_216_096
FLOPS_MMPRETRAIN = 5_745_177_632


@cache
def imagenet_classes() -> tuple[str, ...]:
    """mmpretrain's ImageNet-1k names in index order, e.g. ``'tench, Tinca tinca'``."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet ids in the same order (``n01440764`` first): the folder names of ImageNet's own layout."""
    text = resources.files(__package__).joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(text.split())


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file and how to read it.

    ``hash`` is ``sha256:<hex>`` (a full digest or a prefix, as torch.hub checks the prefix in a
    file name) or ``md5:<hex>`` (Keras publishes md5). ``None`` means no published hash: such a
    file is never downloaded automatically.
    """

    url: str
    source: str
    hash: str | None
    transform_input: bool = False

    @property
    def filename(self) -> str:
        return Path(urlsplit(self.url).path).name


def hash_from_filename(url: str) -> str:
    """torch.hub's convention: ``name-<sha256 prefix>.ext``."""
    match = re.search(r"-([a-f0-9]{6,})\.[A-Za-z0-9]+$", Path(urlsplit(url).path).name)
    if not match:
        raise ValueError(f"{url}: no hash prefix in the file name")
    return "sha256:" + match.group(1)


@dataclass(frozen=True)
class Metrics:
    top1: float
    top5: float
    measured_by: str


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    files: tuple[WeightFile, ...]
    preprocess: Preprocess
    metrics: tuple[Metrics, ...]
    license: str
    origin: tuple[str, ...]
    num_classes: int = 1000
    params: int = PARAMS
    macs: int = MACS_TORCHVISION
    flops_mmpretrain: int = FLOPS_MMPRETRAIN
    notes: str = ""
    class_names: tuple[str, ...] = field(default_factory=imagenet_classes)

    @property
    def source(self) -> str:
        return self.files[0].source

    def cached_file(self) -> Path | None:
        for weight_file in self.files:
            path = cache_dir() / weight_file.filename
            if path.is_file():
                return path
        return None


def _file(url: str, source: str, *, transform_input: bool = False, hash: str | None = "from-name") -> WeightFile:
    return WeightFile(url, source, hash_from_filename(url) if hash == "from-name" else hash, transform_input)


TORCHVISION_GOOGLE = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

ZOO: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            name="inception-v3_3rdparty_8xb32_in1k",
            files=(
                _file(
                    "https://download.openmmlab.com/mmclassification/v0/inception-v3/"
                    "inception-v3_3rdparty_8xb32_in1k_20220615-dcd4d910.pth",
                    "mmpretrain",
                ),
                # download.openmmlab.com has been unreachable since mid-2026; mmpretrain converted
                # its file from these torchvision weights, so they load with the input transform folded.
                _file(TORCHVISION_GOOGLE, "torchvision", transform_input=True),
            ),
            preprocess=PRESETS["mmpretrain"],
            metrics=(Metrics(77.57, 93.58, "mmpretrain metafile (ImageNet-1k val)"),),
            license="Apache-2.0 (mmpretrain) / BSD-3-Clause (torchvision weights)",
            origin=(
                "https://github.com/open-mmlab/mmpretrain/blob/main/configs/inception_v3/metafile.yml",
                "https://github.com/pytorch/vision/blob/main/torchvision/models/inception.py",
            ),
            notes="Falls back to the torchvision file it was converted from when the OpenMMLab host fails.",
        ),
        WeightsEntry(
            name="inception_v3.tv_in1k",
            files=(
                _file(TORCHVISION_GOOGLE, "torchvision", transform_input=True),
                _file("https://download.pytorch.org/models/inception_v3_google-1a9a5a14.pth", "torchvision",
                      transform_input=True),
            ),
            preprocess=PRESETS["torchvision"],
            metrics=(
                Metrics(77.294, 93.450, "torchvision Inception_V3_Weights.IMAGENET1K_V1"),
                Metrics(77.434, 93.474, "timm results-imagenet.csv (timm-inception preprocessing)"),
            ),
            license="BSD-3-Clause",
            origin=("https://github.com/pytorch/vision/blob/main/torchvision/models/inception.py",),
            notes="Google's weights as published by torchvision; transform_input is folded into the first conv.",
        ),
        WeightsEntry(
            name="inception_v3.tf_in1k",
            files=(_file(TIMM_RELEASES + "tf_inception_v3-e0069de4.pth", "timm"),),
            preprocess=PRESETS["timm-inception"],
            metrics=(Metrics(77.862, 93.644, "timm results-imagenet.csv"),),
            license="Apache-2.0",
            origin=(
                "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/inception_v3.py",
                "http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz",
            ),
            notes="Ross Wightman's port of the TF-slim checkpoint (1001 classes; background row dropped).",
        ),
        WeightsEntry(
            name="inception_v3.tf_adv_in1k",
            files=(_file(TIMM_RELEASES + "adv_inception_v3-9e27bd63.pth", "timm"),),
            preprocess=PRESETS["timm-inception"],
            metrics=(Metrics(77.592, 93.730, "timm results-imagenet.csv"),),
            license="Apache-2.0",
            origin=(
                "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/inception_v3.py",
                "http://download.tensorflow.org/models/adv_inception_v3_2017_08_18.tar.gz",
            ),
            notes="Adversarially trained (Kurakin et al.); ported from TensorFlow by timm.",
        ),
        WeightsEntry(
            name="inception_v3.gluon_in1k",
            files=(_file(TIMM_RELEASES + "gluon_inception_v3-9f746940.pth", "timm"),),
            preprocess=PRESETS["timm-imagenet"],
            metrics=(Metrics(78.806, 94.374, "timm results-imagenet.csv"),),
            license="Apache-2.0",
            origin=(
                "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/inception_v3.py",
                "https://cv.gluon.ai/model_zoo/classification.html",
            ),
            notes="GluonCV weights ported by timm; trained with ImageNet mean/std.",
        ),
        WeightsEntry(
            name="inception_v3.keras_in1k",
            files=(
                _file(
                    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
                    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                    "keras",
                    hash="md5:9a0d58056eeedaa3f26cb7ebd46da564",
                ),
            ),
            preprocess=PRESETS["keras"],
            metrics=(Metrics(77.9, 93.7, "Keras Applications table"),),
            license="Apache-2.0",
            origin=("https://github.com/keras-team/keras/blob/master/keras/src/applications/inception_v3.py",),
            notes="Average pools exclude padding (TensorFlow 'same' pooling).",
        ),
        WeightsEntry(
            name="inception_v3.tf_slim_in1k",
            files=(
                _file("http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz", "tf-slim", hash=None),
            ),
            preprocess=PRESETS["tf-slim"],
            metrics=(Metrics(78.0, 93.9, "TF-slim models README"),),
            license="Apache-2.0",
            origin=("https://github.com/tensorflow/models/tree/master/research/slim",),
            notes="Published without a hash and read through TensorFlow: download and extract it yourself, "
            "then `inceptionv3 convert inception_v3.ckpt out.safetensors --source tf-slim`.",
        ),
    )
}


def list_models(pattern: str | None = None) -> list[str]:
    """Zoo names, optionally filtered by a shell-style pattern such as ``'*tf*'``."""
    names = sorted(ZOO)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> WeightsEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


# ---------------------------------------------------------------------------------------------
# Download


WeightsDownloadError = DownloadError  # the name earlier releases exported


def cache_dir() -> Path:
    """``$INCEPTIONV3_HOME`` or ``~/.cache/inceptionv3``."""
    return Path(os.environ.get("INCEPTIONV3_HOME") or Path.home() / ".cache" / "inceptionv3")


def _offline() -> bool:
    return os.environ.get("INCEPTIONV3_OFFLINE", "").lower() in ("1", "true", "yes")


def _mirrored(url: str) -> str:
    """``INCEPTIONV3_MIRROR`` replaces everything but the file name."""
    mirror = os.environ.get("INCEPTIONV3_MIRROR")
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + Path(urlsplit(url).path).name


def _hasher(expected: str):
    algorithm, _, digest = expected.partition(":")
    if algorithm not in ("sha256", "md5") or not digest:
        raise ValueError(f"bad hash spec {expected!r}; use sha256:<hex> or md5:<hex>")
    return hashlib.new(algorithm), digest.lower()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The file's hex digest, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def file_hash_matches(path: Path, expected: str) -> bool:
    algorithm, digest = _hasher(expected)
    return file_digest(path, algorithm.name).startswith(digest)


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, expected: str) -> bool:
    """A cached file is trusted if its marker records this hash, size and mtime; else it is re-hashed."""
    marker = _verified_marker(path)
    stat = path.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    if marker.is_file() and marker.read_text() == stamp:
        return True
    if file_hash_matches(path, expected):
        marker.write_text(stamp)
        return True
    return False


def _stream_to(url: str, dest: Path, expected: str, timeout: float, progress: bool) -> None:
    """One attempt: stream ``url`` into a temporary file next to ``dest``, verify, rename."""
    hasher, digest = _hasher(expected)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    request = urllib.request.Request(url, headers={"User-Agent": "inceptionv3"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr, leave=False)
            try:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise OSError(f"truncated: got {received} of {total} bytes")
        if not hasher.hexdigest().startswith(digest):
            raise ValueError(f"hash mismatch: expected {expected}, got {hasher.name}:{hasher.hexdigest()}")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_weights(
    entry: WeightsEntry,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
) -> tuple[Path, WeightFile]:
    """Return a verified local copy of the first of ``entry.files`` that can be had.

    Each URL is tried ``retries`` times with backoff; a 404 or a wrong hash moves straight on to
    the next URL, since repeating it cannot help.
    """
    directory = cache_dir()
    tried: list[str] = []
    for weight_file in entry.files:
        dest = directory / weight_file.filename
        if weight_file.hash is None:
            tried.append(f"{weight_file.url}: no published hash, so it is not downloaded automatically")
            continue
        if dest.is_file():
            if _is_verified(dest, weight_file.hash):
                return dest, weight_file
            log.warning("%s: cached file fails its hash check; downloading it again", dest)
            dest.unlink()
        if _offline():
            tried.append(f"{weight_file.url}: not downloaded (INCEPTIONV3_OFFLINE is set)")
            continue
        url = _mirrored(weight_file.url)
        directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(retries):
            try:
                _stream_to(url, dest, weight_file.hash, timeout, progress)
                _is_verified(dest, weight_file.hash)  # writes the marker
                return dest, weight_file
            except urllib.error.HTTPError as exc:
                tried.append(f"{url}: HTTP {exc.code} {exc.reason}")
                if exc.code < 500:
                    break
            except ValueError as exc:  # hash mismatch
                tried.append(f"{url}: {exc}")
                break
            except (TimeoutError, urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                tried.append(f"{url}: attempt {attempt + 1}/{retries} failed ({reason})")
            if attempt + 1 < retries:
                time.sleep(0.5 * 2**attempt)
    raise WeightsDownloadError(
        f"could not get weights for {entry.name}.\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Cache: {directory} (set INCEPTIONV3_HOME to move it, INCEPTIONV3_MIRROR to use a mirror).\n"
        f"If you have the file, pass it directly: --weights PATH, or get_model({entry.name!r}, pretrained=PATH)."
    )


# ---------------------------------------------------------------------------------------------
# get_model


@dataclass
class WeightsInfo:
    """What a model was loaded from; inference reads the preset and class names from here."""

    name: str | None
    source: str
    path: str | None
    preprocess: Preprocess
    class_names: tuple[str, ...] | None
    entry: WeightsEntry | None = None
    notes: tuple[str, ...] = ()


def _class_names_for(checkpoint: Checkpoint | None, entry: WeightsEntry | None, num_classes: int):
    if checkpoint is not None and checkpoint.class_names and len(checkpoint.class_names) == num_classes:
        return tuple(checkpoint.class_names)
    if entry is not None and len(entry.class_names) == num_classes:
        return entry.class_names
    if num_classes == 1000:
        return imagenet_classes()
    return None


def _preset_for(checkpoint: Checkpoint | None, entry: WeightsEntry | None) -> Preprocess:
    if entry is not None:
        return entry.preprocess
    if checkpoint is not None and checkpoint.preprocess:
        base, _, crop = checkpoint.preprocess.partition("@")  # "mmpretrain@75": a preset at another crop size
        if base in PRESETS:
            return PRESETS[base].with_crop(int(crop)) if crop.isdigit() else PRESETS[base]
    return PRESETS["torchvision"]


def get_model(
    name_or_path: str | os.PathLike,
    pretrained: bool | str | os.PathLike = True,
    *,
    source: str | None = None,
    transform_input: bool = False,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    aux_logits: bool = False,
    dropout: float = 0.5,
) -> InceptionV3:
    """Build an InceptionV3 from a zoo name or a checkpoint file, in eval mode.

    ``pretrained=False`` gives fresh weights; ``pretrained=PATH`` loads that file into the named
    model (keeping the entry's preprocessing). ``source`` forces a checkpoint format;
    ``transform_input=True`` says the file expects torchvision's input transform, which is folded.
    The result carries ``model.weights_info`` (preset, class names, origin).
    """
    entry = ZOO.get(str(name_or_path))
    checkpoint: Checkpoint | None = None
    if entry is None:
        path = Path(name_or_path)
        if not path.exists():
            raise UnknownModelError(
                f"{name_or_path!r} is neither a zoo model ({', '.join(list_models())}) nor an existing file"
            )
        if pretrained is False:
            raise ValueError(f"pretrained=False with a checkpoint path ({path}) would ignore the file")
        checkpoint = read_checkpoint(path, source=source, transform_input=transform_input)
    elif pretrained is True:
        path, weight_file = download_weights(entry)
        checkpoint = read_checkpoint(
            path, source=source or weight_file.source, transform_input=transform_input or weight_file.transform_input
        )
    elif pretrained:
        checkpoint = read_checkpoint(Path(pretrained), source=source, transform_input=transform_input)

    if checkpoint is not None:
        model = build_model(checkpoint, num_classes=num_classes, aux_logits=aux_logits, dropout=dropout)
    else:
        assert entry is not None
        model = InceptionV3(
            num_classes=num_classes or entry.num_classes, aux_logits=aux_logits, dropout=dropout,
            count_include_pad=count_include_pad_for(entry.source),
        )
    head_changed = checkpoint is not None and num_classes is not None and num_classes != checkpoint.num_classes
    model.weights_info = WeightsInfo(
        name=entry.name if entry else None,
        source=checkpoint.source if checkpoint else (entry.source if entry else "fresh"),
        path=checkpoint.path if checkpoint else None,
        preprocess=_preset_for(checkpoint, entry),
        class_names=None if head_changed else _class_names_for(checkpoint, entry, model.num_classes),
        entry=entry,
        notes=tuple(checkpoint.notes) if checkpoint else (),
    )
    if device is not None:
        model.to(device)
    return model.eval()


__all__ = [
    "ZOO", "WeightsEntry", "WeightFile", "Metrics", "WeightsInfo", "WeightsDownloadError", "CheckpointError",
    "list_models", "get_entry", "get_model", "download_weights", "cache_dir", "imagenet_classes",
]
