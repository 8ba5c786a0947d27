"""Inputs built to hurt (issue 11): FIFOs, sockets and devices among the images, files of gigabytes, zip and gzip
bombs, file names that are not UTF-8. Each must be one clear error for that file, quickly and in little memory,
while the other files keep their results."""

from __future__ import annotations

import csv
import gzip
import os
import re
import socket
import struct
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from inceptionv3 import Classifier, imagenet_classes
from inceptionv3.data import (
    DatasetError,
    align_to_model,
    digits_dataset,
    folder_dataset,
    load_dataset,
    omniglot_dataset,
)
from inceptionv3.decode import ImageLoadError, load_image, read_image_file
from inceptionv3.evaluate import Scores, write_predictions_csv
from inceptionv3.files import find_images

IMAGES = SHARED_DATA / "images"
PHOTO = IMAGES / "felix_220_cheetah.jpg"
TRAIN = SHARED_DATA / "train"
GIB = 1024**3


def _release(fifo: Path) -> None:
    """Unblock a reader stuck opening ``fifo`` (what the old code did), so that no thread outlives the test."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader is waiting
        pass


def _within(seconds: float, fn, *args, fifos: tuple[Path, ...] = (), **kwargs):
    """``fn(*args)``, run in a thread so that a call that blocks forever fails the test instead of hanging it."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            _release(fifo)
        thread.join(10)
        pytest.fail(f"{getattr(fn, '__name__', fn)} was still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def specials(tmp_path):
    """A FIFO, a socket and symlinks to character devices, each named like an image."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "sock.png"))
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.symlink("/dev/urandom", tmp_path / "random.png")
    yield {fifo: "is a FIFO, not a regular file",
           tmp_path / "sock.png": "is a socket, not a regular file",
           tmp_path / "zero.jpg": r"is a symlink to a character device \(/dev/zero\), not a regular file",
           tmp_path / "random.png": r"is a symlink to a character device \(/dev/urandom\), not a regular file"}
    server.close()
    _release(fifo)


def test_fifos_sockets_and_devices_are_refused_before_they_are_opened(specials):
    fifo = next(iter(specials))
    for path, reason in specials.items():
        with pytest.raises(ImageLoadError, match=reason) as caught:
            _within(10, load_image, path, fifos=(fifo,))
        assert caught.value.name == str(path) and str(caught.value) == f"{path}: {caught.value.reason}"
    with pytest.raises(ImageLoadError, match="^/dev/null: is a character device, not a regular file$"):
        load_image("/dev/null")


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    # The race: stat saw a regular file, then a FIFO took its place. O_NONBLOCK and fstat catch it.
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(PHOTO) if Path(path) == fifo else
                        real_stat(path, *a, **k))
    with pytest.raises(ImageLoadError, match="is a FIFO, not a regular file"):
        _within(10, load_image, fifo, fifos=(fifo,))


def _tiny_classifier() -> Classifier:
    """Logits from each image's mean colour: a real Classifier, without the cost of the network."""

    class ColourModel(torch.nn.Module):
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Classifier(ColourModel().eval(), preprocess="mmpretrain", class_names=list("abcd"), backend="eager",
                      batch_size=4, workers=2)


def test_special_and_huge_files_fail_alone_among_good_ones(specials, tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(2 * GIB)  # sparse: instant, and no disk used
    fifo = next(iter(specials))
    reasons = {**specials, huge: "larger than the 100 MB limit"}
    inputs = [PHOTO, *reasons, IMAGES / "coral_cat.bmp"]
    classifier = _tiny_classifier()
    predictions = _within(60, lambda: list(classifier.predict(inputs)), fifos=(fifo,))
    assert [p.name for p in predictions] == [str(i) for i in inputs]
    assert [p.ok for p in predictions] == [True] + [False] * len(reasons) + [True]
    for prediction, reason in zip(predictions[1:-1], reasons.values(), strict=True):
        assert re.search(reason, prediction.error), (prediction.name, prediction.error)
    alone = [p.scores for p in classifier.predict([PHOTO, IMAGES / "coral_cat.bmp"])]
    # The same scores as without the bad files (to float rounding: the batches are made up differently).
    np.testing.assert_allclose(predictions[0].scores, alone[0], rtol=1e-6)
    np.testing.assert_allclose(predictions[-1].scores, alone[1], rtol=1e-6)


def _peak_bytes(fn, *args, **kwargs) -> tuple[BaseException | None, int]:
    """(the error ``fn`` raised, the most memory Python allocated meanwhile)."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        error = None
    except Exception as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("header", [b"", PHOTO.read_bytes()[:4096]], ids=["sparse", "jpeg-header-then-zeros"])
def test_a_2_gb_file_is_refused_by_its_size_without_being_read(tmp_path, header):
    path = tmp_path / "big.jpg"
    path.write_bytes(header)
    with open(path, "ab") as handle:
        handle.truncate(2 * GIB)
    error, peak = _peak_bytes(load_image, path)
    assert isinstance(error, ImageLoadError) and error.name == str(path)
    assert error.reason == "larger than the 100 MB limit (max_bytes): 2,147,483,648 bytes"
    assert peak < 10 * 1024**2  # nothing near the file's size was read


def test_max_bytes_is_configurable_and_enforced_while_reading(tmp_path):
    size = PHOTO.stat().st_size
    assert load_image(PHOTO, max_bytes=size).shape[2] == 3
    with pytest.raises(ImageLoadError, match=f"larger than the {size - 1:,}-byte limit \\(max_bytes\\): {size:,} "):
        load_image(PHOTO, max_bytes=size - 1)
    with pytest.raises(ImageLoadError, match="larger than the 1,000-byte limit"):
        load_image(PHOTO.read_bytes(), max_bytes=1000)  # encoded bytes in memory obey the same limit
    # /proc files say they hold 0 bytes and then give more: the limit holds while reading, not only at fstat.
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(ImageLoadError, match=r"larger than the 100-byte limit \(max_bytes\): more than 100 bytes read"):
        read_image_file("/proc/self/status", max_bytes=100)


# --- training data bombs ----------------------------------------------------------------------------------------


def test_the_shared_training_sets_fit_the_default_limits():
    # Measured: digits.csv.gz inflates to 264,712 bytes, the Omniglot zips to 656,309 and 798,023 bytes.
    with gzip.open(TRAIN / "digits.csv.gz") as handle:
        assert len(handle.read()) == 264_712
    assert len(digits_dataset(TRAIN / "digits.csv.gz")) == 1797
    for name, count, inflated in [("small1", 2720, 656_309), ("small2", 3120, 798_023)]:
        path = TRAIN / f"omniglot_images_background_{name}.zip"
        with zipfile.ZipFile(path) as archive:
            assert sum(i.file_size for i in archive.infolist()) == inflated
        dataset = omniglot_dataset(path)
        assert len(dataset) == count and sum(len(item) for item in dataset.items) <= inflated


def _omniglot_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            archive.writestr(f"images_background/{name}", data)
    return path


def test_an_omniglot_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    bomb = _omniglot_zip(tmp_path / "bomb.zip", {"Latin/character01/01.png": bytes(20 * 1024**2)})
    assert bomb.stat().st_size < 100_000
    error, peak = _peak_bytes(load_dataset, bomb)
    assert isinstance(error, DatasetError)
    assert str(error) == (f"{bomb}: member images_background/Latin/character01/01.png declares 20,971,520 bytes, "
                          "over the 16,777,216-byte limit for one image (a zip bomb?)")
    assert peak < 5 * 1024**2


def test_an_omniglot_zip_over_the_total_limit_is_refused(tmp_path):
    members = {f"Latin/character{n:02d}/01.png": bytes(300_000) for n in range(10)}
    bomb = _omniglot_zip(tmp_path / "many.zip", members)
    with pytest.raises(DatasetError, match=rf"^{tmp_path}/many.zip: its 10 images would inflate to 3,000,000 bytes, "
                                           r"over the 1,000,000-byte limit"):
        omniglot_dataset(bomb, max_total_bytes=1_000_000)
    assert len(omniglot_dataset(bomb, max_total_bytes=3_000_000)) == 10


def test_a_zip_that_lies_about_its_sizes_is_still_bounded(tmp_path):
    bomb = _omniglot_zip(tmp_path / "liar.zip", {"Latin/character01/01.png": bytes(50 * 1024**2)})
    data = bytearray(bomb.read_bytes())
    # Declare 400 bytes inflated, in the local header (offset 22) and the central directory (offset 24).
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 400)
    struct.pack_into("<I", data, central + 24, 400)
    bomb.write_bytes(bytes(data))
    error, peak = _peak_bytes(omniglot_dataset, bomb)
    assert isinstance(error, DatasetError) and str(error).startswith(f"{bomb}: member images_background/Latin/")
    assert peak < 5 * 1024**2  # the 50 MB it really holds were never inflated


def test_a_digits_gzip_bomb_is_refused_while_inflating(tmp_path):
    bomb = tmp_path / "digits.csv.gz"
    bomb.write_bytes(gzip.compress(b"0" * (65 * 1024**2), compresslevel=1))
    assert bomb.stat().st_size < 1024**2
    error, peak = _peak_bytes(load_dataset, bomb)
    assert isinstance(error, DatasetError)
    assert str(error) == (f"{bomb}: decompresses to more than 67,108,864 bytes, the limit for a digits CSV "
                          "(a decompression bomb?)")
    assert peak < 100 * 1024**2
    with pytest.raises(DatasetError, match="decompresses to more than 1,000 bytes"):
        digits_dataset(TRAIN / "digits.csv.gz", max_bytes=1000)


@pytest.mark.parametrize("content, message", [
    (b"not gzip at all", "not a readable gzip file"),
    (gzip.compress(b"1,2,3\n"), r"expected rows of 64 pixel values \(0-16\) and a label \(0-9\)"),
    (gzip.compress(b"a,b\n"), "not a CSV of integers"),
    (gzip.compress(b",".join([b"0"] * 64) + b",99\n"), r"a label \(0-9\)"),
])
def test_broken_digits_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as caught:
        digits_dataset(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_data_files_that_are_fifos_are_refused(tmp_path):
    fifos = (tmp_path / "val.txt", tmp_path / "classes.zip", tmp_path / "digits.csv.gz")
    for fifo in fifos:
        os.mkfifo(fifo)
    for args in [(tmp_path, fifos[0]), (fifos[0],), (fifos[1],), (fifos[2],)]:
        with pytest.raises(DatasetError, match=r"is a FIFO, not a regular file$"):
            _within(10, load_dataset, *args, fifos=fifos)
    for reader in (omniglot_dataset, digits_dataset):  # called directly, without load_dataset's checks
        with pytest.raises(DatasetError, match=r"is a FIFO, not a regular file$"):
            _within(10, reader, fifos[1], fifos=fifos)


# --- file names that are not UTF-8 ------------------------------------------------------------------------------


def test_names_that_are_not_utf8_are_kept_and_can_be_printed(tmp_path):
    good = tmp_path / os.fsdecode(b"caf\xe9.jpg")  # Latin-1, as older systems wrote it
    bad = tmp_path / os.fsdecode(b"bad\xff.png")
    good.write_bytes(PHOTO.read_bytes())
    bad.write_bytes(b"not an image\n")
    found = find_images(tmp_path)
    assert sorted(os.fsencode(p.name) for p in found) == [b"bad\xff.png", b"caf\xe9.jpg"]
    assert load_image(good).shape[2] == 3
    with pytest.raises(ImageLoadError) as caught:
        load_image(bad)
    assert os.fsencode(caught.value.name) == os.fsencode(tmp_path) + b"/bad\xff.png"  # exact, for the caller
    message = str(caught.value)
    message.encode("utf-8")  # printable on any UTF-8 stream: no lone surrogates
    assert message.startswith(f"{tmp_path}/bad\\xff.png: not a recognised image format")

    # An annotation file can list such a name (its bytes as they are on disk), and its row reaches the CSV with the
    # odd byte written as \xNN, as every output of this package writes it (valid UTF-8, nothing lost).
    (tmp_path / "val.txt").write_bytes(b"caf\xe9.jpg 293\n")
    dataset = load_dataset(tmp_path, tmp_path / "val.txt")
    assert dataset.names == [str(good)] and dataset.labels.tolist() == [293]
    scores = Scores(labels=np.array([293]), topk=np.array([[293, 1]]), topk_scores=np.array([[0.75, 0.25]]),
                    names=dataset.names)
    out = tmp_path / "preds.csv"
    write_predictions_csv(out, scores, imagenet_classes())
    with open(out, newline="", encoding="utf-8") as handle:  # strict: the file is valid UTF-8
        rows = list(csv.DictReader(handle))
    assert [(r["path"], r["label"], r["top1_class"]) for r in rows] == [
        (f"{tmp_path}/caf\\xe9.jpg", "293", "cheetah, chetah, Acinonyx jubatus")]


def test_class_folders_that_are_not_utf8_are_named_in_errors(tmp_path):
    folder = tmp_path / os.fsdecode(b"gu\xe9pard")
    folder.mkdir()
    (folder / "x.jpg").write_bytes(PHOTO.read_bytes())
    dataset = folder_dataset(tmp_path)
    assert dataset.names == [str(folder / "x.jpg")]
    with pytest.raises(DatasetError) as caught:
        align_to_model(dataset, imagenet_classes(), 1000)
    message = str(caught.value)
    message.encode("utf-8")
    assert "gu\\xe9pard (no such class)" in message


# --- checkpoint files built to hurt --------------------------------------------------------------


def test_checkpoints_that_are_fifos_or_devices_are_refused_before_they_are_opened(specials, tmp_path):
    from inceptionv3 import CheckpointError, read_checkpoint

    fifo = next(iter(specials))
    for name in ("weights.keras", "weights.pth", "weights.h5"):
        os.mkfifo(tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: is a FIFO, not a regular file"):
            _within(10, read_checkpoint, tmp_path / name, fifos=(tmp_path / name,))
        _release(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"zero\.jpg: is a symlink to a character device \(/dev/zero\)"):
        _within(10, read_checkpoint, tmp_path / "zero.jpg", fifos=(fifo,))
    with pytest.raises(CheckpointError, match="^/dev/zero: is a character device, not a regular file$"):
        _within(10, read_checkpoint, "/dev/zero")


def _keras_zip(path: Path, weights: bytes = b"x" * 100) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.weights.h5", weights)
    return path.read_bytes()


def _patched(raw: bytes, patches: list[tuple[bytes, int, bytes]]) -> bytes:
    """The zip with bytes replaced at an offset from the first of each record signature."""
    data = bytearray(raw)
    for signature, offset, value in patches:
        at = data.find(signature) + offset
        data[at:at + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize("patches, reason", [
    ([(b"PK\x01\x02", 0, b"XXXX")], "a damaged zip archive"),  # the central directory's signature
    ([(b"PK\x01\x02", 20, struct.pack("<II", 10**6, 10**6))], r"EOFError"),  # sizes past the end of the file
    ([(b"PK\x03\x04", 6, b"\x01"), (b"PK\x01\x02", 8, b"\x01")], "encrypted"),
    ([(b"PK\x03\x04", 8, b"\x09\x00"), (b"PK\x01\x02", 10, b"\x09\x00")], "compression method is not supported"),
])
def test_keras_archives_with_damaged_or_unsupported_zip_records_are_one_clear_error(tmp_path, patches, reason):
    from inceptionv3 import CheckpointError, read_checkpoint

    path = tmp_path / "model.keras"
    path.write_bytes(_patched(_keras_zip(tmp_path / "ok.keras"), patches))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: .*{reason}"):
        read_checkpoint(path)


def _h5_bytes(build) -> bytes:
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        build(handle)
    return buffer.getvalue()


def _dataset_named_layers(handle):
    handle.create_dataset("layers", data=np.zeros(3))


def _a_link_loop(handle):
    import h5py

    handle.create_group("layers/conv2d/vars")["0"] = h5py.SoftLink("/layers/conv2d/vars/0")


def _billion_row_vars(handle):  # 427 bytes zipped; `"0" in dataset` would scan 10^9 rows
    handle.create_group("layers/conv2d").create_dataset("vars", shape=(10**9,), dtype="u1", chunks=(1 << 20,),
                                                        compression="gzip")


@pytest.mark.parametrize("build, reason", [
    (_dataset_named_layers, "'layers' is not a group"),
    (_a_link_loop, "too many links"),
    (_billion_row_vars, "layer 'conv2d' is not a group"),
])
def test_keras_weights_with_crafted_hdf5_structure_fail_fast_and_clearly(tmp_path, build, reason):
    from inceptionv3 import CheckpointError, read_checkpoint

    path = tmp_path / "crafted.keras"
    _keras_zip(path, _h5_bytes(build))
    with pytest.raises(CheckpointError, match=f"crafted.keras: .*{reason}"):
        _within(20, read_checkpoint, path)



def _jpeg_bytes(progressive: bool = False) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((64, 48)).save(buffer, "JPEG", progressive=progressive)
    return buffer.getvalue()


def test_only_the_listed_formats_are_opened_so_eps_and_icons_never_decode(tmp_path):
    """Pillow tries every plugin it has: an EPS body ran Ghostscript (and its error echoed the command line), an
    ICO decoded its largest icon before --max-pixels was checked. Both are now refused as unrecognised."""
    import io

    from PIL import Image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n"
    icon = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(icon, "ICO", sizes=[(64, 64)])
    for data in (eps, icon.getvalue()):
        with pytest.raises(ImageLoadError, match="not a recognised image format"):
            load_image(data)


def test_jpegs_that_cannot_decode_within_bounds_are_named_for_what_they_are():
    """A progressive JPEG with thousands of scans held a decode thread for minutes; arithmetic-coded and 12-bit
    JPEGs failed with the decoder's cryptic message. Each is refused from its markers, saying what it is."""
    import time

    progressive = _jpeg_bytes(progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    crafted = progressive[:-2] + progressive[last_scan:-2] * 300 + b"\xff\xd9"
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match=r"JPEG with [\d,]+ scans"):
        load_image(crafted)
    assert time.monotonic() - started < 1
    baseline = bytearray(_jpeg_bytes())
    sof = baseline.index(b"\xff\xc0")
    arithmetic = bytes(baseline[:sof + 1]) + b"\xc9" + bytes(baseline[sof + 2:])
    with pytest.raises(ImageLoadError, match="arithmetic-coded JPEG"):
        load_image(arithmetic)
    twelve = bytearray(baseline)
    twelve[sof + 4] = 12
    with pytest.raises(ImageLoadError, match="12-bit JPEG"):
        load_image(bytes(twelve))
    assert load_image(progressive).shape == (48, 64, 3)  # the ordinary kinds still decode


def test_a_float_tiff_with_nan_pixels_is_an_error_not_black(tmp_path):
    from PIL import Image

    values = np.full((8, 8), 0.5, np.float32)
    values[2, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageLoadError, match="NaN or inf"):
        load_image(tmp_path / "nan.tif", decoder="pil")
    with pytest.raises(ImageLoadError, match="NaN or inf"):
        load_image(tmp_path / "nan.tif")


def test_a_name_with_a_nul_byte_is_a_clear_error():
    from inceptionv3.files import FileReadError, read_file

    with pytest.raises(FileReadError, match="not a valid file name"):
        read_file("photo\x00.jpg", 1000, "an image file")
    with pytest.raises(ImageLoadError, match="not a valid file name"):
        load_image("photo\x00.jpg")
