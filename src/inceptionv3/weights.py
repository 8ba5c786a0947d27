"""The weight zoo, its verified download, and ``get_model``.

Each :class:`WeightsEntry` carries what is needed to use its weights correctly: the files (in
order of preference, each with its own format), the preprocessing preset, the class names and the
published metrics. Downloads are streamed to a temporary file, hash-checked, and only then renamed
into the cache, so a partial or wrong file is never used. A transfer must also finish within a deadline
and keep up a minimum rate, since the per-read timeout alone lets a trickling server hold it forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import torch

from .checkpoints import (
    TORCHVISION_GOOGLE_SHA256,
    Checkpoint,
    CheckpointError,
    build_model,
    count_include_pad_for,
    is_tf_checkpoint_prefix,
    read_checkpoint,
)
from .errors import DownloadError, InputError, UnknownModelError
from .files import atomic_path, cache_dir, file_digest, unique_temp_path
from .imagenet import imagenet_classes, imagenet_wnids
from .model import InceptionV3
from .preprocess import PRESETS, Preprocess, PresetRef

log = logging.getLogger(__name__)

PARAMS = 23_834_568
MACS_TORCHVISION = 5_713_216_096
FLOPS_MMPRETRAIN = 5_745_177_632


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file and how to read it.

    ``hash`` is ``sha256:<hex>`` (a full digest or a prefix, as torch.hub checks the prefix in a
    file name) or ``md5:<hex>`` (Keras publishes md5). Where the full sha256 is known it is given, since
    the 32-bit prefix in a file name can be matched on purpose. ``None`` means no published hash: such a
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
class Accuracy:
    """A published ImageNet-1k accuracy of an entry's weights, and who measured it."""

    top1: float
    top5: float
    measured_by: str


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    files: tuple[WeightFile, ...]
    preprocess: Preprocess
    accuracy: tuple[Accuracy, ...]
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
TORCHVISION_GOOGLE_HASH = "sha256:" + TORCHVISION_GOOGLE_SHA256  # its name carries only the first 8 hex digits
TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

FID_MODEL = "inception-2015-12-05_fid"
"""The network FID, KID and IS are defined on (TF's 2015-12-05 graph): see :mod:`.fid_network`."""
FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
"""Of the 95,628,359-byte file both pytorch-fid and torch-fidelity publish (their names carry its first 8 digits)."""
FID_PREPROCESS = Preprocess(
    "pytorch-fid-like", 299, 299, "bilinear", "cv2", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), scale=255.0,
    order="crop_resize", crop_fraction=1.0,
    source_note="close to pytorch-fid's input (whole image, bilinear to 299x299 without antialiasing, x / 127.5 - 1)"
    " for classifying with it; `inceptionv3 fid` applies each FID implementation's exact pipeline instead",
)

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
                _file(TORCHVISION_GOOGLE, "torchvision", transform_input=True, hash=TORCHVISION_GOOGLE_HASH),
            ),
            preprocess=PRESETS["mmpretrain"],
            accuracy=(Accuracy(77.57, 93.58, "mmpretrain metafile (ImageNet-1k val)"),),
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
                _file(TORCHVISION_GOOGLE, "torchvision", transform_input=True, hash=TORCHVISION_GOOGLE_HASH),
                _file("https://download.pytorch.org/models/inception_v3_google-1a9a5a14.pth", "torchvision",
                      transform_input=True),
            ),
            preprocess=PRESETS["torchvision"],
            accuracy=(
                Accuracy(77.294, 93.450, "torchvision Inception_V3_Weights.IMAGENET1K_V1"),
                Accuracy(77.434, 93.474, "timm results-imagenet.csv (timm-inception preprocessing)"),
            ),
            license="BSD-3-Clause",
            origin=("https://github.com/pytorch/vision/blob/main/torchvision/models/inception.py",),
            notes="Google's weights as published by torchvision. They expect torchvision's transform_input, which "
            "loading folds into the first conv; weights_info.notes says whether it was folded.",
        ),
        WeightsEntry(
            name="inception_v3.tf_in1k",
            files=(_file(TIMM_RELEASES + "tf_inception_v3-e0069de4.pth", "timm"),),
            preprocess=PRESETS["timm-inception"],
            accuracy=(Accuracy(77.862, 93.644, "timm results-imagenet.csv"),),
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
            accuracy=(Accuracy(77.592, 93.730, "timm results-imagenet.csv"),),
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
            accuracy=(Accuracy(78.806, 94.374, "timm results-imagenet.csv"),),
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
            accuracy=(Accuracy(77.9, 93.7, "Keras Applications table"),),
            license="Apache-2.0",
            origin=("https://github.com/keras-team/keras/blob/master/keras/src/applications/inception_v3.py",),
            notes="Average pools exclude padding (TensorFlow 'same' pooling).",
        ),
        WeightsEntry(
            name=FID_MODEL,
            files=(
                _file("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                      "pt_inception-2015-12-05-6726825d.pth", "pytorch-fid", hash="sha256:" + FID_SHA256),
                _file("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                      "weights-inception-2015-12-05-6726825d.pth", "torch-fidelity", hash="sha256:" + FID_SHA256),
            ),
            preprocess=FID_PREPROCESS,
            accuracy=(),
            license="Apache-2.0",
            origin=(
                "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz",
                "https://github.com/mseitzer/pytorch-fid/blob/master/src/pytorch_fid/inception.py",
            ),
            num_classes=1008,
            params=23_850_960,
            macs=5_713_232_480,
            flops_mmpretrain=5_745_194_016,
            notes="The FID network, not a classifier to rank: TensorFlow's 2015-12-05 graph (1008 outputs, no "
            "auxiliary head, average pools without padding, a max pool in Mixed_7c) that FID, KID and IS are defined "
            "on; no top-1 published. Used by `inceptionv3 fid` and `features` (fid_network.load_fid_network() in "
            "Python); get_model refuses it, since its classifier path would build the wrong graph.",
            class_names=(),
        ),
        WeightsEntry(
            name="inception_v3.tf_slim_in1k",
            files=(
                _file("http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz", "tf-slim", hash=None),
            ),
            preprocess=PRESETS["tf-slim"],
            accuracy=(Accuracy(78.0, 93.9, "TF-slim models README"),),
            license="Apache-2.0",
            origin=("https://github.com/tensorflow/models/tree/master/research/slim",),
            notes="Published without a hash and read through TensorFlow: download and extract it yourself, "
            "then `inceptionv3 convert inception_v3.ckpt out.safetensors --source tf-slim`.",
        ),
    )
}


DEFAULT_MODEL = "inception-v3_3rdparty_8xb32_in1k"
"""What every command, ``Classifier`` and the server load when given neither a model nor a weights file."""


@dataclass(frozen=True)
class ModelChoice:
    """What a ``--model`` / ``--weights`` pair means, decided in one place: ``get_model(name_or_path, pretrained)``.

    Neither: the default model, downloaded. A model alone: that zoo name (or file). A file alone: the file names
    the model. Both: the file loaded into that zoo entry (keeping its preprocessing)."""

    name_or_path: str
    pretrained: bool | str = True

    @property
    def label(self) -> str:
        """How messages and the server name it: the zoo name, else the file."""
        return self.name_or_path


def resolve_model(model: str | os.PathLike | None = None, weights: str | os.PathLike | None = None) -> ModelChoice:
    model = os.fspath(model) if model else None
    weights = os.fspath(weights) if weights else None
    if model is None:  # a file alone names the model; neither: the default
        return ModelChoice(weights or DEFAULT_MODEL)
    return ModelChoice(model, weights or True)


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




def _offline() -> bool:
    return os.environ.get("INCEPTIONV3_OFFLINE", "").lower() in ("1", "true", "yes")


def _mirrored(url: str) -> str:
    """``INCEPTIONV3_MIRROR`` replaces everything but the file name."""
    mirror = os.environ.get("INCEPTIONV3_MIRROR")
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + Path(urlsplit(url).path).name


DEADLINE_S = 1800.0
"""Default limit on one transfer, whole: the per-read timeout alone never ends a server that trickles."""

MIN_RATE = 10_000.0
"""Default minimum rate in bytes/s, averaged over RATE_WINDOW_S once a transfer has run that long."""

RATE_WINDOW_S = 60.0


def _hasher(expected: str):
    algorithm, _, digest = expected.partition(":")
    if algorithm not in ("sha256", "md5") or not digest:
        raise ValueError(f"bad hash spec {expected!r}; use sha256:<hex> or md5:<hex>")
    return hashlib.new(algorithm), digest.lower()


def file_hash_matches(path: Path, expected: str) -> bool:
    algorithm, digest = _hasher(expected)
    return file_digest(path, algorithm.name).startswith(digest)


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, expected: str) -> str:
    stat = path.stat()
    return f"{expected} {stat.st_size} {stat.st_mtime_ns}"


def _mark_verified(path: Path, expected: str) -> None:
    try:
        _verified_marker(path).write_text(_stamp(path, expected))
    except OSError:  # a read-only folder (another tool's cache): hash it again next time
        pass


def is_verified(path: Path, expected: str) -> bool:
    """A cached file is trusted if its marker records this hash, size and mtime; else it is re-hashed."""
    marker = _verified_marker(path)
    if marker.is_file() and marker.read_text() == _stamp(path, expected):
        return True
    if file_hash_matches(path, expected):
        _mark_verified(path, expected)
        return True
    return False


class _Abandoned(Exception):
    """A transfer that is too slow to finish: retrying the same URL would not help."""


class _Pace:
    """Ends a transfer past its deadline, or when the last ``window`` seconds averaged under ``min_rate``.

    It is checked after every read, and a read returns as soon as any data arrives (or fails after the
    per-read timeout), so the deadline is overshot by at most that timeout.
    """

    def __init__(self, deadline: float, min_rate: float, window: float) -> None:
        self.deadline, self.min_rate, self.window = deadline, min_rate, window
        self.start = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.start, 0)])

    def check(self, received: int) -> None:
        now = time.monotonic()
        if now - self.start > self.deadline:
            raise _Abandoned(f"not finished within the {self.deadline:g} s deadline ({received:,} bytes received)")
        self.samples.append((now, received))
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()  # keep the newest sample that is at least a window old
        then, then_received = self.samples[0]
        if now - then < self.window:
            return  # the first window is the grace period
        rate = (received - then_received) / (now - then)
        if rate < self.min_rate:
            raise _Abandoned(f"too slow: {rate:,.0f} B/s over the last {now - then:.3g} s "
                             f"(minimum {self.min_rate:,.0f} B/s)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as someone else's
        return True
    return True


def _remove_stale_partials(dest: Path) -> None:
    """Remove the ``.partial`` files (``<name>.<pid>.<random>.partial``) of downloads whose process died
    without cleaning up: killed, or the machine lost power. Without POSIX pids, a day untouched is stale."""
    for partial in dest.parent.glob(f"{dest.name}.*.partial"):
        pid = partial.name[len(dest.name) + 1:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        if os.name == "posix":
            stale = not _pid_alive(int(pid))
        else:
            stale = time.time() - partial.stat().st_mtime > 86400
        if stale:
            partial.unlink(missing_ok=True)


class _Watchdog:
    """Shuts the connection down when the deadline passes, wherever the transfer is. ``urlopen`` returns only after
    the response headers, and the per-read timeout alone lets a server trickle them for ever."""

    def __init__(self, seconds: float) -> None:
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.timer = threading.Timer(max(0.0, seconds), self.fire)
        self.timer.daemon = True

    def fire(self) -> None:
        self.fired = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def attach(self, sock: socket.socket) -> None:
        self.sockets.append(sock)
        if self.fired:
            self.fire()

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib with connections that report their sockets here as soon as they connect."""
        watchdog = self

        class Plain(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                watchdog.attach(self.sock)

        class Secure(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                watchdog.attach(self.sock)

        class PlainHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Plain, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(Secure, req, context=self._context)

        return urllib.request.build_opener(PlainHandler, SecureHandler)


def _stream_to(url: str, dest: Path, expected: str, timeout: float, progress: bool, pace: _Pace) -> None:
    """One attempt: stream ``url`` into a temporary file next to ``dest``, verify, rename.

    The temporary file has a name of its own (two downloads never share it) and is removed on every way
    out, an exception or Ctrl-C included. The deadline covers the whole attempt, the response headers included.
    """
    watchdog = _Watchdog(pace.deadline - (time.monotonic() - pace.start))
    watchdog.timer.start()
    try:
        _stream(url, dest, expected, timeout, progress, pace, watchdog.opener())
    except (OSError, ValueError, http.client.HTTPException):  # a cut-off response can end in any of these
        if watchdog.fired:
            raise _Abandoned(f"not finished within the {pace.deadline:g} s deadline (headers or body still "
                             "arriving)") from None
        raise
    finally:
        watchdog.timer.cancel()


def _stream(url: str, dest: Path, expected: str, timeout: float, progress: bool, pace: _Pace,
            opener: urllib.request.OpenerDirector) -> None:
    hasher, digest = _hasher(expected)
    request = urllib.request.Request(url, headers={"User-Agent": "inceptionv3"})
    with atomic_path(dest, ".partial") as tmp:
        with opener.open(request, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr, leave=False)
            try:
                while chunk := response.read1(1 << 16):  # whatever has arrived: a trickle cannot hold a read
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    pace.check(received)
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise OSError(f"truncated: got {received} of {total} bytes")
        if not hasher.hexdigest().startswith(digest):
            raise ValueError(f"hash mismatch: expected {expected}, got {hasher.name}:{hasher.hexdigest()}")


def download_weights(
    entry: WeightsEntry,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
    deadline: float = DEADLINE_S,
    min_rate: float = MIN_RATE,
    rate_window: float = RATE_WINDOW_S,
) -> tuple[Path, WeightFile]:
    """Return a verified local copy of the first of ``entry.files`` that can be had.

    Each URL is tried ``retries`` times with backoff; a 404, a wrong hash, or a transfer past
    ``deadline`` seconds or under ``min_rate`` bytes/s (over ``rate_window`` s) moves straight on to
    the next URL, since repeating it cannot help. ``timeout`` bounds each read.
    """
    directory = cache_dir()
    tried: list[str] = []
    for weight_file in entry.files:
        dest = directory / weight_file.filename
        if weight_file.hash is None:
            tried.append(f"{weight_file.url}: no published hash, so it is not downloaded automatically")
            continue
        if dest.is_file():
            if is_verified(dest, weight_file.hash):
                return dest, weight_file
            log.warning("%s: cached file fails its hash check; downloading it again", dest)
            dest.unlink()
        if _offline():
            tried.append(f"{weight_file.url}: not downloaded (INCEPTIONV3_OFFLINE is set)")
            continue
        url = _mirrored(weight_file.url)
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(dest)
        for attempt in range(retries):
            try:
                _stream_to(url, dest, weight_file.hash, timeout, progress, _Pace(deadline, min_rate, rate_window))
                is_verified(dest, weight_file.hash)  # writes the marker
                return dest, weight_file
            except urllib.error.HTTPError as exc:
                tried.append(f"{url}: HTTP {exc.code} {exc.reason}")
                if exc.code < 500:
                    break
            except (ValueError, _Abandoned) as exc:  # hash mismatch, too slow
                tried.append(f"{url}: {exc}")
                break
            except (TimeoutError, urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                tried.append(f"{url}: attempt {attempt + 1}/{retries} failed ({reason})")
            if attempt + 1 < retries:
                time.sleep(0.5 * 2**attempt)
    raise DownloadError(
        f"could not get weights for {entry.name}.\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Cache: {directory} (set INCEPTIONV3_HOME to move it, INCEPTIONV3_MIRROR to use a mirror).\n"
        + (f"{entry.name} is the default model, used when neither --model nor --weights is given.\n"
           if entry.name == DEFAULT_MODEL else "")
        + ("If you have the file, pass it directly: --weights PATH, or load_fid_network(PATH)."
           if entry.name == FID_MODEL else
           f"If you have the file, pass it directly: --weights PATH, or get_model({entry.name!r}, pretrained=PATH).")
    )


def add_to_cache(entry: WeightsEntry, source: str | os.PathLike) -> tuple[Path, WeightFile]:
    """A file brought by hand (a machine without network, a copy from another one) put into the cache as the
    entry's file whose hash it matches, exactly as a download would leave it: copied to a temporary name, checked,
    renamed. A file that matches none of the entry's hashes is refused and nothing is written."""
    from .files import FileReadError, open_regular

    try:
        handle = open_regular(source, 1 << 40, "a weights file")
    except FileReadError as exc:
        raise InputError(f"{source}: {exc.reason}") from None
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = unique_temp_path(cache_dir() / entry.name, ".partial")
    try:
        hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}  # the zoo publishes one or the other
        with handle, open(tmp, "wb") as out:  # one read of the source: copied and hashed together
            while chunk := handle.read(1 << 20):
                out.write(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
        digests = {name: hasher.hexdigest() for name, hasher in hashers.items()}
        for weight_file in entry.files:
            if weight_file.hash:
                algorithm, digest = _hasher(weight_file.hash)
                if digests[algorithm.name].startswith(digest):
                    dest = cache_dir() / weight_file.filename
                    os.replace(tmp, dest)
                    _mark_verified(dest, weight_file.hash)
                    return dest, weight_file
    finally:
        tmp.unlink(missing_ok=True)
    hashes = ", ".join(f"{f.filename} ({f.hash})" for f in entry.files if f.hash)
    raise InputError(f"{source}: its hash matches none of {entry.name}'s files: {hashes or 'none published'}")


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
    notes: tuple[str, ...] = ()


def class_names_for(checkpoint: Checkpoint | None, entry: WeightsEntry | None, num_classes: int):
    if checkpoint is not None and checkpoint.class_names and len(checkpoint.class_names) == num_classes:
        return tuple(checkpoint.class_names)
    if entry is not None and len(entry.class_names) == num_classes:
        return entry.class_names
    if num_classes == 1000:
        return imagenet_classes()
    return None


def preset_for(checkpoint: Checkpoint | None, entry: WeightsEntry | None) -> Preprocess:
    if entry is not None:
        return entry.preprocess
    if checkpoint is not None and checkpoint.preprocess:
        try:
            return PresetRef.parse(checkpoint.preprocess).resolve()  # "mmpretrain@75": another crop size
        except InputError as exc:
            raise CheckpointError(f"{checkpoint.path or 'checkpoint'}: {exc}") from None
    return PRESETS["torchvision"]


def _note_what_was_done(preset: Preprocess, checkpoint: Checkpoint | None) -> Preprocess:
    """The preset's note, as attached to a loaded model, says whether transform_input was folded into
    these weights, not what the zoo's own file gets."""
    note = preset.source_note
    if checkpoint is not None and checkpoint.transform_input_folded:
        note += "; transform_input folded into the weights"
    elif checkpoint is not None and checkpoint.transform_input_folded is False and checkpoint.source == "torchvision":
        note += "; transform_input not folded (pass transform_input=True if these weights expect it)"
    return preset if note == preset.source_note else dataclasses.replace(preset, source_note=note)


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
    ``transform_input=True`` says the file expects torchvision's input transform, which is folded
    (torchvision's own Google file is recognised by its sha256 and folded without being asked).
    The result carries ``model.weights_info`` (preset, class names, origin).
    """
    entry = ZOO.get(str(name_or_path))
    if entry is not None and entry.name == FID_MODEL:  # another graph: build_model would make the wrong one
        raise InputError(f"{FID_MODEL} is the FID network, not a classifier: use `inceptionv3 fid` / `features`, "
                         "or inceptionv3.fid_network.load_fid_network()")
    checkpoint: Checkpoint | None = None
    if entry is None:
        path = Path(name_or_path)
        if not path.exists() and not is_tf_checkpoint_prefix(path):
            raise UnknownModelError(
                f"{name_or_path!r} is neither a zoo model ({', '.join(list_models())}) nor an existing file"
            )
        if pretrained is False:
            raise InputError(f"pretrained=False with a checkpoint path ({path}) would ignore the file")
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
        preprocess=_note_what_was_done(preset_for(checkpoint, entry), checkpoint),
        class_names=None if head_changed else class_names_for(checkpoint, entry, model.num_classes),
        notes=tuple(checkpoint.notes) if checkpoint else (),
    )
    if device is not None:
        model.to(device)
    return model.eval()


__all__ = [
    "ZOO", "WeightsEntry", "WeightFile", "Accuracy", "WeightsInfo", "DownloadError", "CheckpointError",
    "list_models", "get_entry", "get_model", "download_weights", "cache_dir", "file_digest", "imagenet_classes",
    "imagenet_wnids", "FID_MODEL",
]
