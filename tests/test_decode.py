"""Decoding: every format and mode a user may hand us, from the real photos, through both decoders."""

from __future__ import annotations

import builtins
import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from inceptionv3.decode import (
    ImageLoadError,
    bgr_array_to_rgb,
    decode_bytes,
    load_image,
)
from inceptionv3.errors import InputError
from inceptionv3.files import find_images

PHOTO = SHARED_DATA / "images" / "felix_220_cheetah.jpg"
DECODERS = ("cv2", "pil")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo, small enough to keep the tests quick, with detail in every channel."""
    return Image.open(PHOTO).convert("RGB").resize((160, 120), Image.BILINEAR)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                                          ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})])
def test_lossless_formats_decode_exactly(photo, decoder, fmt, options):
    rgb = decode_bytes(encode(photo, fmt, **options), decoder=decoder)
    assert rgb.dtype == np.uint8 and rgb.shape == (120, 160, 3)
    np.testing.assert_array_equal(rgb, np.asarray(photo))


def test_jpeg_decoders_agree_with_each_other_and_the_original(photo):
    data = encode(photo, "JPEG", quality=95, subsampling=0)  # no chroma subsampling: only rounding is lost
    by_cv2, by_pil = decode_bytes(data, decoder="cv2"), decode_bytes(data, decoder="pil")
    assert np.abs(by_cv2.astype(int) - by_pil).max() <= 1
    assert np.abs(by_cv2.astype(float) - np.asarray(photo)).mean() < 3.0  # swapped channels give ~20


@pytest.mark.parametrize("decoder", DECODERS)
def test_gif_gives_its_first_frame(photo, decoder):
    first = photo.convert("P", palette=Image.ADAPTIVE)
    second = Image.new("RGB", photo.size, (255, 0, 0)).convert("P", palette=Image.ADAPTIVE)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    np.testing.assert_array_equal(decode_bytes(data, decoder=decoder), np.asarray(first.convert("RGB")))


@pytest.mark.parametrize("decoder", DECODERS)
def test_grayscale_and_la_become_three_equal_channels(photo, decoder):
    gray = np.asarray(photo.convert("L"))
    for image in (photo.convert("L"), photo.convert("LA")):
        rgb = decode_bytes(encode(image, "PNG"), decoder=decoder)
        for channel in range(3):
            np.testing.assert_array_equal(rgb[:, :, channel], gray)


@pytest.mark.parametrize("decoder", DECODERS)
def test_alpha_is_dropped_and_colours_kept_as_stored(photo, decoder):
    rgba = photo.copy()
    alpha = np.zeros((120, 160), np.uint8)
    alpha[:, 80:] = 255  # the left half is fully transparent, yet its colours must survive unchanged
    rgba.putalpha(Image.fromarray(alpha))
    np.testing.assert_array_equal(decode_bytes(encode(rgba, "PNG"), decoder=decoder), np.asarray(photo))


@pytest.mark.parametrize("decoder", DECODERS)
def test_palette_images_are_looked_up(photo, decoder):
    paletted = photo.convert("P", palette=Image.ADAPTIVE, colors=64)
    indices = np.asarray(paletted)
    table = np.array(paletted.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    expected = table[indices]  # the palette lookup done by hand, independent of either decoder
    np.testing.assert_array_equal(decode_bytes(encode(paletted, "PNG"), decoder=decoder), expected)
    transparent = encode(paletted, "PNG", transparency=0)
    np.testing.assert_array_equal(decode_bytes(transparent, decoder=decoder), expected)


@pytest.mark.parametrize("decoder", DECODERS)
def test_cmyk_jpeg_becomes_rgb(photo, decoder):
    rgb = decode_bytes(encode(photo.convert("CMYK"), "JPEG", quality=95), decoder=decoder)
    assert rgb.shape == (120, 160, 3)
    assert np.abs(rgb.astype(float) - np.asarray(photo)).mean() < 4.0


def test_16_bit_png_keeps_the_high_byte_in_both_decoders(photo):
    rng = np.random.default_rng(0)
    gray8 = np.asarray(photo.convert("L")).astype(np.uint16)
    gray16 = gray8 * 256 + rng.integers(0, 256, gray8.shape, dtype=np.uint16)  # noise in the low byte
    data = encode(Image.fromarray(gray16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    for decoder in DECODERS:
        np.testing.assert_array_equal(decode_bytes(data, decoder=decoder)[:, :, 0], gray8)
    colour16 = np.asarray(photo)[:, :, ::-1].astype(np.uint16) * 256 + 255
    ok, encoded = cv2.imencode(".png", colour16)
    for decoder in DECODERS:
        np.testing.assert_array_equal(decode_bytes(encoded.tobytes(), decoder=decoder), np.asarray(photo))


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_is_applied(photo, decoder):
    plain = encode(photo, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    tagged = encode(photo, "JPEG", quality=95, exif=exif)
    upright = decode_bytes(plain, decoder=decoder)
    rotated = decode_bytes(tagged, decoder=decoder)
    assert rotated.shape == (160, 120, 3)
    np.testing.assert_array_equal(rotated, np.rot90(upright, k=-1))
    # A PIL image opened from such a file is treated like the file.
    np.testing.assert_array_equal(load_image(Image.open(io.BytesIO(tagged))), np.rot90(upright, k=-1))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("decoder", DECODERS)
def test_decompression_bombs_are_refused_before_decoding(photo, decoder):
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_bytes(_png_header_only(100_000, 100_000), "bomb.png", decoder=decoder)
    with pytest.raises(ImageLoadError, match=r"bomb.*160 x 120 pixels exceeds the limit of 10,000"):
        decode_bytes(encode(photo, "PNG"), "big.png", decoder=decoder, max_pixels=10_000)


@pytest.mark.parametrize("decoder", DECODERS)
def test_tiny_and_thin_images_decode(photo, decoder):
    for size in ((1, 1), (2000, 3), (3, 2000)):
        image = photo.resize(size)
        np.testing.assert_array_equal(decode_bytes(encode(image, "PNG"), decoder=decoder), np.asarray(image))


def test_each_broken_file_names_its_path_and_reason(tmp_path, photo):
    jpeg = encode(photo, "JPEG")
    cases = {
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + os.urandom(2000), "corrupt|truncated|cannot|not a recognised"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (encode(photo, "PNG")[:3000], "truncated"),
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"this is a text file, not a picture\n" * 20, "not a recognised image format"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    cases.update({"folder.jpg": (None, "is a directory"), "loop_a.jpg": (None, "symlink loop"),
                  "dangling.jpg": (None, "broken symlink"), "missing.jpg": (None, "no such file")})
    for decoder in DECODERS:
        for name, (_, reason) in cases.items():
            path = tmp_path / name
            with pytest.raises(ImageLoadError, match=reason) as caught:
                load_image(path, decoder=decoder)
            assert caught.value.name == str(path) and str(path) in str(caught.value)


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch, photo):
    # Tests may run as root, which reads any file whatever its mode, so the refusal is simulated at open().
    path = tmp_path / "locked.png"
    path.write_bytes(encode(photo, "PNG"))
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(ImageLoadError, match="permission denied") as caught:
        load_image(path)
    assert caught.value.name == str(path)


def test_arrays_are_read_as_bgr(photo):
    rgb = np.asarray(photo)
    np.testing.assert_array_equal(load_image(np.ascontiguousarray(rgb[:, :, ::-1])), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.zeros((120, 160, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(bgra), rgb)
    gray = np.asarray(photo.convert("L"))
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    with pytest.raises(ImageLoadError, match="uint8.*float32"):
        bgr_array_to_rgb(rgb.astype(np.float32), "frame")
    with pytest.raises(ImageLoadError, match=r"shape \(120, 160, 2\)"):
        bgr_array_to_rgb(rgb[:, :, :2], "frame")
    with pytest.raises(ImageLoadError, match="unsupported input type int"):
        load_image(42)


def test_find_images_recurses_and_ignores_extension_case(tmp_path, photo):
    for relative in ("b/deep/one.JPG", "a/two.png", "a/three.Jpeg", "a/skip.txt", "top.WebP", "a/four.tif"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["top.WebP", "a/four.tif", "a/three.Jpeg", "a/two.png", "b/deep/one.JPG"]


# -- the fast decode: JPEGs at a reduced DCT scale ---------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    """A real photo upscaled to 1600 x 1200 (short side 1200: 1/2 keeps 600 >= 342, 1/4 would give 300)."""
    return encode(Image.open(PHOTO).convert("RGB").resize((1600, 1200), Image.BICUBIC), "JPEG", quality=92)


def test_dct_scale_is_the_largest_reduction_that_covers_the_resize():
    from inceptionv3.decode import dct_scale

    assert dct_scale(4000, 3000, 342) == 8  # 375
    assert dct_scale(3024, 4032, 342) == 8  # 378
    assert dct_scale(2000, 1500, 342) == 4  # 375; 1/8 would give 188
    assert dct_scale(1600, 1200, 342) == 2
    assert dct_scale(2729, 4000, 342) == 8  # ceil(2729 / 8) = 342: libjpeg rounds up
    assert dct_scale(2728, 4000, 342) == 4  # 2728 / 8 = 341
    assert dct_scale(600, 500, 342) == 1 and dct_scale(4000, 3000, None) == 1


@pytest.mark.parametrize("decoder", DECODERS)
def test_fast_decode_reduces_large_jpegs_only_and_stays_close(large_jpeg, photo, decoder):
    exact = decode_bytes(large_jpeg, decoder=decoder)
    fast = decode_bytes(large_jpeg, decoder=decoder, min_side=342)
    assert exact.shape == (1200, 1600, 3) and fast.shape == (600, 800, 3)
    halved = cv2.resize(exact, (800, 600), interpolation=cv2.INTER_AREA)  # what a 1/2 DCT scale approximates
    assert np.abs(fast.astype(int) - halved.astype(int)).mean() < 2.0
    small = encode(photo, "JPEG", quality=90)  # 160 x 120: nothing to reduce
    assert np.array_equal(decode_bytes(small, decoder=decoder, min_side=342), decode_bytes(small, decoder=decoder))
    png = encode(Image.open(PHOTO).convert("RGB").resize((1600, 1200)), "PNG")
    assert decode_bytes(png, decoder=decoder, min_side=342).shape == (1200, 1600, 3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_fast_decode_applies_exif_orientation_and_keeps_the_typed_errors(large_jpeg, decoder):
    image = Image.open(io.BytesIO(large_jpeg))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = encode(image, "JPEG", quality=92, exif=exif.tobytes())
    exact = decode_bytes(rotated, decoder=decoder)
    fast = decode_bytes(rotated, decoder=decoder, min_side=342)
    assert exact.shape == (1600, 1200, 3) and fast.shape == (800, 600, 3)
    halved = cv2.resize(exact, (600, 800), interpolation=cv2.INTER_AREA)
    assert np.abs(fast.astype(int) - halved.astype(int)).mean() < 2.0  # rotated the same way
    for broken in (large_jpeg[:2000], b"\xff\xd8\xff\xe0" + b"\0" * 64):
        with pytest.raises(ImageLoadError) as exact_error:
            decode_bytes(broken, "x.jpg", decoder=decoder)
        with pytest.raises(ImageLoadError) as fast_error:
            decode_bytes(broken, "x.jpg", decoder=decoder, min_side=342)
        assert fast_error.value.reason.split(" (")[0] == exact_error.value.reason.split(" (")[0]


def test_classifier_decodes_exactly_on_eager_fp32_and_fast_elsewhere(trained_like_checkpoint, large_jpeg):
    from inceptionv3.inference import Classifier

    exact = Classifier(trained_like_checkpoint, backend="eager", device="cpu")
    assert exact.decode == "exact" and exact.min_side is None
    fast = Classifier(exact.model, backend="eager", precision="bf16", device="cpu")
    assert fast.decode == "fast" and fast.min_side == 342
    forced = Classifier(exact.model, backend="eager", device="cpu", decode="fast")
    a, b = exact.load_views(large_jpeg, "a")[0], forced.load_views(large_jpeg, "b")[0]
    # 4.9 grey levels measured: mmpretrain's cv2 resize does not antialias, so the exact path aliases on the way
    # from 1600 x 1200 down to 456 x 342, and the half-size DCT decode (a box filter) aliases less
    assert a.shape == b.shape == (299, 299, 3) and 0 < np.abs(a.astype(int) - b.astype(int)).mean() < 8
    with pytest.raises(InputError, match="decode must be one of"):
        Classifier(exact.model, backend="eager", device="cpu", decode="quick")
