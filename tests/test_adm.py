"""ADM evaluation: image arrays as inputs, sFID, and the evaluator's five numbers, each checked against an
independent computation (numpy and scipy as the evaluator uses them) or the reference library."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import photo_paths
from PIL import Image

from inceptionv3.adm import adm_evaluate, adm_side
from inceptionv3.cli import main
from inceptionv3.errors import InputError
from inceptionv3.features import FIDMetric, extract_features, make_extractor
from inceptionv3.fid_math import inception_score
from inceptionv3.image_arrays import ImageArray


def _images(n: int, seed: int, size: int = 64) -> np.ndarray:
    """n uint8 N x size x size x 3 crops of the test photos, each shifted and tinted a little differently."""
    rng = np.random.default_rng(seed)
    photos = [np.array(Image.open(p).convert("RGB").resize((160, 120))) for p in photo_paths()]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, 120 - size), rng.integers(0, 160 - size)
        tint = rng.integers(-25, 25, size=3)
        out.append(np.clip(photo[top:top + size, left:left + size].astype(int) + tint, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adm")
    ref, sample = _images(8, seed=1), _images(6, seed=2)
    np.savez(folder / "ref.npz", ref)
    np.savez(folder / "sample.npz", sample, np.arange(len(sample)))  # arr_1: labels, as class-conditional runs write
    return folder, ref, sample


@pytest.fixture(scope="module")
def batch_features(batches, fid_weights):
    """Each batch's pool, spatial and unbiased-logit taps through the tf preset, computed once for the module."""
    folder, _, _ = batches
    return {name: extract_features(folder / f"{name}.npz", ["2048", "spatial", "logits_unbiased"], preset="tf",
                                   weights=fid_weights, batch_size=5, device="cpu")
            for name in ("ref", "sample")}


def _low_rank_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    """FID of two small feature sets without a d x d matrix function: with centred rows X, S = X^T X / (n - 1),
    and tr sqrt(S1 S2) is the sum of the singular values of X1 X2^T / sqrt((n1 - 1)(n2 - 1)). Exact for any d,
    and independent of the eigendecompositions the package uses (scipy's sqrtm, as the evaluator calls it, is
    only accurate to about 1e-5 on the singular products that a dozen samples in 2023-d give)."""
    x1, x2 = x1.astype(np.float64), x2.astype(np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    trace_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = x1.mean(0) - x2.mean(0)
    return float(diff @ diff + (c1 ** 2).sum() / (n1 - 1) + (c2 ** 2).sum() / (n2 - 1) - 2 * trace_sqrt)


def _evaluator_prc(ref: np.ndarray, sample: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Brute force in float64: squared distances, radius = the k-th smallest of a row (the row itself is the 0th),
    a point is covered when its squared distance to some centre is <= that centre's radius."""
    def squared(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    radii_ref = np.partition(squared(ref, ref), k, axis=1)[:, k]
    radii_sample = np.partition(squared(sample, sample), k, axis=1)[:, k]
    cross = squared(ref, sample)  # ref x sample
    precision = (cross <= radii_ref[:, None]).any(axis=0).mean()
    recall = (cross <= radii_sample[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def test_a_png_folder_and_the_same_images_as_arr_0_give_identical_features(batches, batch_features, fid_weights,
                                                                           tmp_path):
    folder, ref, _ = batches
    for i, image in enumerate(ref):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    layers = ["2048", "spatial", "logits_unbiased"]
    from_folder = extract_features(tmp_path, layers, preset="tf", weights=fid_weights, batch_size=5, device="cpu")
    from_array = batch_features["ref"]
    for layer in layers:
        np.testing.assert_array_equal(from_folder.arrays[layer], from_array.arrays[layer])
    assert from_array.files[3].endswith("ref.npz:arr_0[3]") and from_array.meta["n"] == 8
    metric = FIDMetric("tf", weights=fid_weights, layer="spatial", device="cpu")  # sFID inside a training loop
    metric.update(torch.from_numpy(ref).permute(0, 3, 1, 2), real=False)
    np.testing.assert_array_equal(metric.fake.mean, from_array.arrays["spatial"].astype(np.float64).mean(0))
    assert main(["fid", str(folder / "ref.npz"), str(tmp_path), "--weights", str(fid_weights), "--preset", "tf",
                 "--backend", "eager", "--workers", "0", "--quiet"]) == 0  # an array and a folder side by side


def test_adm_mode_gives_the_evaluators_five_numbers(batches, batch_features, fid_weights, tmp_path, capsys):
    folder, ref, sample = batches
    ours, theirs = batch_features["ref"], batch_features["sample"]
    out = tmp_path / "adm.json"
    assert main(["fid", "--adm", str(folder / "ref.npz"), str(folder / "sample.npz"), "--weights", str(fid_weights),
                 "--backend", "eager", "--workers", "0", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in printed] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    value = {line.split(":")[0]: float(line.split(": ")[1]) for line in printed}

    expected_fid = _low_rank_fid(theirs.arrays["2048"], ours.arrays["2048"])
    expected_sfid = _low_rank_fid(theirs.arrays["spatial"], ours.arrays["spatial"])
    assert value["FID"] == pytest.approx(expected_fid, rel=1e-6)
    assert value["sFID"] == pytest.approx(expected_sfid, rel=1e-6)
    weight = torch.load(fid_weights, weights_only=True)["fc.weight"].double().numpy()
    logits = theirs.arrays["2048"].astype(np.float64) @ weight.T  # the evaluator: pool_3 times W, no bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected_is = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), 1)))
    assert value["Inception Score"] == pytest.approx(expected_is, rel=1e-9)
    precision, recall = _evaluator_prc(ours.arrays["2048"], theirs.arrays["2048"])
    assert (value["Precision"], value["Recall"]) == (precision, recall)
    report = json.loads(out.read_text())
    assert report["fid"] == value["FID"] and report["inputs"]["ref"]["images"] == 8
    assert report["conventions"]["is_split_size"] == 5000 and report["network"]["preset"] == "tf"


def test_a_reference_batch_with_statistics_is_used_as_the_evaluator_uses_it(batches, batch_features, fid_weights,
                                                                             tmp_path):
    """The evaluator takes a batch's own mu/sigma/mu_s/sigma_s over its images: with statistics saved from other
    images, FID and sFID are those against the other images, while precision and recall use the batch's own."""
    folder, ref, _ = batches
    other = tmp_path / "other.npy"
    np.save(other, _images(5, seed=7))
    stats_file = tmp_path / "other-stats.npz"
    assert main(["fid", "--adm", "--save-stats", str(other), str(stats_file), "--weights", str(fid_weights),
                 "--backend", "eager", "--workers", "0", "--quiet", "--with-images", "3"]) == 0
    saved = dict(np.load(stats_file))  # as the evaluator reads it: plain np.load, no pickles
    assert {"mu", "sigma", "mu_s", "sigma_s", "arr_0"} <= set(saved) and saved["mu_s"].shape == (2023,)
    np.testing.assert_array_equal(saved["arr_0"], np.load(other)[:3])  # a reference batch: images for P/R
    np.savez(stats_file, **{k: v for k, v in saved.items() if k != "arr_0"})  # statistics only, from here on
    combined = tmp_path / "ref-with-stats.npz"
    np.savez(combined, ref, mu=saved["mu"], sigma=saved["sigma"], mu_s=saved["mu_s"], sigma_s=saved["sigma_s"])
    extractor = make_extractor("tf", fid_weights, device="cpu")
    side = adm_side(combined, extractor)
    assert side.statistics_from == "file" and side.images == 8
    np.testing.assert_array_equal(side.stats.mu, saved["mu"])
    np.testing.assert_array_equal(side.spatial.covariance(), saved["sigma_s"])
    # precision and recall still come from the batch's own images: its features, not the other set's
    np.testing.assert_array_equal(side.pool, batch_features["ref"].arrays["2048"])
    stats_only = adm_evaluate(stats_file, folder / "sample.npz", weights=fid_weights, device="cpu")
    assert stats_only.precision is None and stats_only.ref.statistics_from == "file"
    assert any("no precision and recall" in note for note in stats_only.notes)
    assert stats_only.inception_score is not None and stats_only.sfid > 0


def test_adm_inception_score_equals_torch_fidelitys_with_two_unshuffled_splits_at_10000():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(10_000, 1008, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    theirs = isc_features_to_metric(logits, splits=2, shuffle=False)["inception_score_mean"]
    assert inception_score(logits.numpy(), split_size=5000).mean == pytest.approx(theirs, rel=1e-12)
    # 12,000 samples: consecutive splits of 5,000, 5,000 and 2,000, as the evaluator slices them
    more = torch.cat([logits, logits[:2000] * 0.5])
    parts = [inception_score(more[a:b].numpy(), splits=1, shuffle=False).mean
             for a, b in ((0, 5000), (5000, 10000), (10000, 12000))]
    assert inception_score(more.numpy(), split_size=5000).mean == pytest.approx(np.mean(parts), rel=1e-12)


def test_adm_mode_refuses_options_it_would_ignore(batches, capsys):
    folder, _, _ = batches
    paths = [str(folder / "ref.npz"), str(folder / "sample.npz")]
    for extra, said in ((["--kid"], "leave out --kid"), (["--preset", "clean"], "--preset tf"),
                        (["--dims", "768"], "leave out --dims")):
        assert main(["fid", "--adm", *paths, *extra]) == 2
        assert said in capsys.readouterr().err


def _write_npy_member(path, payload: bytes, compress: bool = False) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("arr_0.npy", payload)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_hostile_arrays_get_one_clear_error_naming_the_file(tmp_path):
    good = _images(4, seed=3, size=16)
    cases = {
        "objects.npy": (np.array([{"a": 1}, None], dtype=object), "Python objects"),
        "floats.npy": (good.astype(np.float32), "float32 values"),
        "gray.npy": (good[..., 0], "N x H x W x 3"),
        "rgba.npy": (np.concatenate([good, good[..., :1]], axis=3), "N x H x W x 3"),
        "fortran.npy": (np.asfortranarray(good), "Fortran"),
        "empty.npy": (good[:0], "no images"),
    }
    for name, (array, said) in cases.items():
        np.save(tmp_path / name, array, allow_pickle=True)
        with pytest.raises(InputError, match=re.escape(said)) as caught:
            ImageArray.open(tmp_path / name)
        assert name in str(caught.value)
    huge = bytearray(_npy_bytes(good))  # a header declaring 10**12 images: refused before anything is allocated
    declared = huge.replace(b"(4, 16, 16, 3)", b"(1000000000000, 16, 16, 3)")
    (tmp_path / "declares.npy").write_bytes(declared)
    with pytest.raises(InputError, match="truncated: its header declares 1000000000000 images"):
        ImageArray.open(tmp_path / "declares.npy")
    (tmp_path / "short.npy").write_bytes(_npy_bytes(good)[:-100])
    with pytest.raises(InputError, match="short.npy: truncated"):
        ImageArray.open(tmp_path / "short.npy")
    # a deflated member that declares far more than deflate can produce
    _write_npy_member(tmp_path / "bomb.npz", _npy_bytes(np.zeros((400, 16, 16, 3), np.uint8)), compress=True)
    raw = bytearray((tmp_path / "bomb.npz").read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 2**32 - 2)  # its uncompressed size in the directory
    (tmp_path / "bomb.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"bomb.npz:arr_0: declares .* \(a zip bomb\)"):
        ImageArray.open(tmp_path / "bomb.npz")
    # corrupt deflated data after a good header: the images read so far are not silently the whole set
    payload = _npy_bytes(_images(40, seed=4, size=16))
    _write_npy_member(tmp_path / "corrupt.npz", payload, compress=True)
    raw = bytearray((tmp_path / "corrupt.npz").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)
    (tmp_path / "corrupt.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt.npz:arr_0: (truncated or corrupt after image|unreadable)"):
        for _ in ImageArray.open(tmp_path / "corrupt.npz").batches(8):
            pass
    np.savez(tmp_path / "no-images.npz", labels=np.arange(3))
    with pytest.raises(InputError, match="no 'arr_0' array"):
        ImageArray.open(tmp_path / "no-images.npz")
    os.mkfifo(tmp_path / "fifo.npy")
    for path, said in ((tmp_path / "fifo.npy", "FIFO"), ("/dev/zero", "character device")):
        with pytest.raises(InputError, match=said):
            ImageArray.open(path)


def test_array_batches_stream_in_memory_that_follows_the_batch_not_the_file(tmp_path):
    """A 141 MB array read in batches of 64 from an .npz member: the reading process's peak memory grows by about
    9 MB here (a deflated member: 14 MB); np.load of the same member grows it by 141 MB."""
    images = np.random.default_rng(0).integers(0, 255, size=(3000, 128, 128, 3), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", images)
    del images
    script = (
        "import resource, sys\n"
        "from inceptionv3.image_arrays import ImageArray\n"
        "array = ImageArray.open(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "total = sum(len(batch) for _, batch in array.batches(64))\n"
        "print(total, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "stored.npz")], capture_output=True,
                          text=True, check=True, timeout=120)
    count, grown_mb = (int(v) for v in done.stdout.split())
    assert count == 3000
    assert grown_mb < 30, f"reading grew the peak by {grown_mb} MB for a {3000 * 128 * 128 * 3 >> 20} MB array"


def test_ranks_share_an_array_in_whole_batches_and_gather_it_back_in_order(monkeypatch, tmp_path):
    """Each process reads its own whole batches of the array (batch b on rank b mod world); gathered, the rows
    are the one-process rows in order. The network is a stub here: the sharding is what is tested."""
    from types import SimpleNamespace

    from inceptionv3 import features
    from inceptionv3.features import gather_in_order, iterate_features

    array = _images(11, seed=5, size=8)
    np.save(tmp_path / "shard.npy", array)
    source = ImageArray.open(tmp_path / "shard.npy")
    stub = SimpleNamespace(
        preset=SimpleNamespace(prepare=lambda rgb: torch.from_numpy(rgb.astype(np.float32))),
        device=torch.device("cpu"),
        taps=lambda x, layers: {"2048": x.flatten(1)},
    )
    parts = []
    for rank in range(3):
        monkeypatch.setattr(features, "rank_world", lambda rank=rank: (rank, 3))
        names, rows = [], []
        for batch_names, taps in iterate_features(source, stub, ["2048"], batch_size=2, shard=True):
            names.extend(batch_names)
            rows.append(taps["2048"].numpy())
        parts.append((names, {"2048": np.concatenate(rows)}))
    assert [n.rsplit("[", 1)[1] for n in parts[1][0]] == ["2]", "3]", "8]", "9]"]  # batches 1 and 4
    order = [source.name(i) for i in range(source.count)]
    names, gathered = gather_in_order(order, parts[0][0], parts[0][1], all_gather=lambda part: parts)
    assert names == order
    np.testing.assert_array_equal(gathered["2048"], array.reshape(11, -1).astype(np.float32))


def test_first_order_contributions_predict_removing_each_image_and_rank_the_worst_first():
    """On 300 synthetic 16-d features with 10 outliers: FID equals the package's distance, each contribution
    predicts the leave-one-out change (correlation 0.9998 measured), the gradient matches finite differences, and
    removing the 20 top-ranked images lowers FID far more than removing 20 at random."""
    from inceptionv3.fid_math import FIDStatistics, frechet_distance
    from inceptionv3.fid_sensitivity import fid_sensitivity

    rng = np.random.default_rng(0)
    real = FIDStatistics().update(rng.standard_normal((400, 16)) * np.linspace(0.5, 2, 16))
    generated = rng.standard_normal((300, 16)) * np.linspace(0.6, 1.8, 16) + 0.2
    generated[:10] += 3  # outliers

    def fid(features):
        return frechet_distance(FIDStatistics().update(features), real).fid

    found = fid_sensitivity(generated, real)
    assert found.fid == pytest.approx(fid(generated), rel=1e-12)
    removed = np.array([fid(np.delete(generated, i, axis=0)) - found.fid for i in range(len(generated))])
    assert np.corrcoef(removed, found.contributions)[0, 1] > 0.999
    h = 1e-5
    for i, j in ((3, 5), (0, 0), (250, 15)):
        up, down = generated.copy(), generated.copy()
        up[i, j] += h
        down[i, j] -= h
        assert found.gradients[i, j] == pytest.approx((fid(up) - fid(down)) / (2 * h), rel=1e-5, abs=1e-9)
    top = found.ranking()[:20]
    assert set(range(10)) <= set(top.tolist())
    random_removals = [fid(np.delete(generated, rng.choice(300, 20, replace=False), axis=0)) for _ in range(10)]
    assert fid(np.delete(generated, top, axis=0)) < 0.5 * np.mean(random_removals)


def test_fid_heatmaps_rank_every_image_and_draw_the_top_ones(batches, fid_weights, tmp_path, capsys):
    import csv

    from inceptionv3.features import make_extractor
    from inceptionv3.fid_sensitivity import heatmaps

    folder, _, sample = batches
    out = tmp_path / "maps"
    assert main(["fid", str(folder / "sample.npz"), str(folder / "ref.npz"), "--weights", str(fid_weights),
                 "--preset", "tf", "--backend", "eager", "--workers", "0", "--quiet", "--heatmaps", str(out),
                 "--top", "2"]) == 0
    assert "images that raise FID most" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "contributions.csv")))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    changes = [float(r["fid_change_if_removed"]) for r in rows]
    assert changes == sorted(changes) and rows[0]["image"].startswith(str(folder / "sample.npz:arr_0["))
    assert sorted(p.name for p in out.glob("*.png")) == ["001.png", "002.png"]
    assert Image.open(out / "001.png").size[0] > 600
    # the map: Mixed_7c's channels weighted by the gradient / 64, ReLU, min-max, resized, min-max (grad-cam's steps)
    extractor = make_extractor("tf", fid_weights, device="cpu")
    gradient = np.random.default_rng(1).standard_normal((1, 2048))
    seen = []
    hook = extractor.model.Mixed_7c.register_forward_hook(lambda _m, _i, output: seen.append(output.double()))
    (mask,) = heatmaps(extractor, [sample[0]], gradient)
    hook.remove()
    layer = torch.relu((seen[0][0] * torch.from_numpy(gradient[0] / 64)[:, None, None]).sum(0))
    layer = (layer - layer.min()) / (1e-7 + (layer - layer.min()).max())
    big = torch.nn.functional.interpolate(layer[None, None], size=(299, 299), mode="bilinear")[0, 0].clamp_min(0)
    expected = (big - big.min()) / (1e-7 + (big - big.min()).max())
    np.testing.assert_allclose(mask, expected.numpy(), atol=1e-6)
