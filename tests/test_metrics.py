"""FID, KID, IS and feature extraction, held to the reference implementations run here on the same inputs.

The published FID weights cannot be downloaded in tests, so a file in their exact layout (torchvision's key names,
1008 classes, legacy torch.save format, no BN counters) is built from seeded random weights whose BN statistics are
measured on real photos. pytorch-fid and torch-fidelity load that same file: pytorch-fid from
$TORCH_HOME/hub/checkpoints, where torch.hub looks first, so nothing touches the network.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import calibrate, load_rgb01, photo_paths
from PIL import Image, ImageOps

from inceptionv3 import fid_network
from inceptionv3.cli import main
from inceptionv3.errors import CheckpointError, DownloadError, InputError
from inceptionv3.fid_math import (
    FIDStatistics,
    ProvenanceWarning,
    RankDeficientWarning,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from inceptionv3.fid_network import LAYERS, fid_inception_v3, forward_taps, load_fid_network, read_fid_weights
from inceptionv3.metrics import extract_features, folder_statistics, make_extractor
from inceptionv3.model import InceptionV3

PT_NAME = "pt_inception-2015-12-05-6726825d.pth"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")  # a missing file must fail here, never download


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory):
    """Seeded random FID network, BN calibrated on three real photos (at 160 px, to save time), saved as the 2019
    file was: a plain OrderedDict in torch's legacy (pre-zip) format, without num_batches_tracked."""
    photos = np.stack([load_rgb01(p, size=160) for p in photo_paths()[:3]])
    batch = torch.from_numpy((photos * 2 - 1).transpose(0, 3, 1, 2).copy())
    torch.manual_seed(0)  # torch's default init (trunc_normal over 24M weights is slow); the BN calibration rescales
    model = InceptionV3(num_classes=1008, count_include_pad=False, mixed_7c_pool="max", init_weights=False)
    model = calibrate(model, batch)
    model.fc.bias.data = torch.randn(1008) * 0.5  # so that logits and logits_unbiased differ
    state = collections.OrderedDict((k, v) for k, v in model.state_dict().items()
                                    if not k.endswith("num_batches_tracked"))
    path = tmp_path_factory.mktemp("fid-weights") / PT_NAME
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture
def torch_home(tmp_path, fid_weights, monkeypatch):
    """$TORCH_HOME with the test file where torch.hub (pytorch-fid) looks for the published one."""
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(fid_weights, checkpoints / PT_NAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return checkpoints


def _photo(index: int) -> Image.Image:
    paths = photo_paths()
    return Image.open(paths[index % len(paths)]).convert("RGB")


@pytest.fixture(scope="session")
def same_size_folder(tmp_path_factory):
    """Two real photos as 180 x 150 PNGs (pytorch-fid batches without resizing first, so sizes must agree)."""
    folder = tmp_path_factory.mktemp("same-size")
    for i in range(2):
        _photo(i * 7).resize((180, 150), Image.BILINEAR).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def ours_all_taps(same_size_folder, fid_weights):
    """All six taps of the folder in one pass per image (batch size 1)."""
    return extract_features(same_size_folder, LAYERS, weights=fid_weights, batch_size=1, device="cpu")


def _stack01(folder) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def _relative_to_range(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / (reference.max() - reference.min()))


# -- the network and its weights --------------------------------------------------------------------------------


def test_fid_network_is_the_2015_graph_and_defaults_are_unchanged():
    net = fid_inception_v3()
    assert net.num_classes == 1008 and net.AuxLogits is None and net.count_include_pad is False
    assert net.Mixed_7c.pool == "max" and net.Mixed_7b.pool == "avg" and not net.Mixed_5b.count_include_pad
    default = InceptionV3(init_weights=False)
    assert default.Mixed_7c.pool == "avg" and default.count_include_pad
    with pytest.raises(ValueError, match="pool must be"):
        InceptionV3(mixed_7c_pool="min")


def test_weights_load_without_unpickling_code(tmp_path, fid_weights):
    legacy = read_fid_weights(fid_weights)  # the legacy format, through torch.load(weights_only=True)
    assert legacy["fc.weight"].shape == (1008, 2048) and "Mixed_7c.branch_pool.bn.num_batches_tracked" in legacy
    zipped = tmp_path / "zip.pth"
    torch.save({f"module.{k}": v for k, v in legacy.items()}, zipped)  # zip format, DataParallel prefix
    again = read_fid_weights(zipped)
    assert all(torch.equal(again[k], legacy[k]) for k in legacy)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    hostile = tmp_path / "hostile.pth"
    torch.save({"fc.weight": legacy["fc.weight"], "x": Payload()}, hostile, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_fid_weights(hostile)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in legacy.items() if not k.startswith("Mixed_7c.")}, partial)
    with pytest.raises(CheckpointError, match="not the FID Inception layout"):
        read_fid_weights(partial)
    wrong_head = tmp_path / "head.pth"
    torch.save(dict(legacy, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}), wrong_head)
    with pytest.raises(CheckpointError, match="fc.weight has shape"):
        read_fid_weights(wrong_head)


def test_cached_copy_in_torch_home_is_reused_only_when_its_hash_matches(torch_home, fid_weights, monkeypatch):
    with pytest.raises(DownloadError):  # the test file is not the published one: its hash prefix differs
        fid_network.locate_fid_weights(download=False)
    prefix = fid_network.file_digest(fid_weights)[:8]
    monkeypatch.setattr(fid_network, "FID_SHA256_PREFIX", prefix)
    assert fid_network.locate_fid_weights(download=False) == torch_home / PT_NAME


def test_one_pass_returns_the_subset_and_stops_at_the_deepest_tap(fid_weights):
    model = load_fid_network(fid_weights).model
    called = []
    for name in ("Mixed_5b", "Mixed_7a", "fc"):
        getattr(model, name).register_forward_hook(lambda *_, name=name: called.append(name))
    x = torch.rand(2, 3, 96, 96) * 2 - 1  # the stem alone needs no 299 input
    with torch.no_grad():
        taps = forward_taps(model, x, ["192", "64"])
    assert set(taps) == {"64", "192"} and taps["64"].shape == (2, 64) and taps["192"].shape == (2, 192)
    assert called == []
    with pytest.raises(InputError, match="unknown feature layer"):
        forward_taps(model, x, ["1000"])


# -- parity with the reference libraries ------------------------------------------------------------------------


def test_features_match_pytorch_fid_on_every_block(torch_home, same_size_folder, ours_all_taps):
    from pytorch_fid.inception import InceptionV3 as PytorchFidInception

    reference = PytorchFidInception([0, 1, 2, 3]).eval()  # builds fid_inception_v3(), loading our file from the hub
    batch = _stack01(same_size_folder).float() / 255  # ToTensor; one batch of 2, ours ran one image at a time
    with torch.no_grad():
        blocks = reference(batch)
    for layer, block in zip(("64", "192", "768", "2048"), blocks, strict=True):
        expected = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(block, 1), 1).numpy()
        assert _relative_to_range(ours_all_taps.arrays[layer], expected) <= 1e-6, layer


def test_tf_preset_matches_torch_fidelity(same_size_folder, fid_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    reference = FeatureExtractorInceptionV3("inception-v3-compat", list(LAYERS),
                                            feature_extractor_weights_path=str(fid_weights))
    with torch.no_grad():
        expected = reference(_stack01(same_size_folder))
    ours = extract_features(same_size_folder, LAYERS, preset="tf", weights=fid_weights, batch_size=2, device="cpu")
    assert ours.meta["preset"] == "tf"
    for layer, value in zip(LAYERS, expected, strict=True):
        assert _relative_to_range(ours.arrays[layer], value.numpy()) <= 1e-6, layer
    bias = torch.load(fid_weights, weights_only=True)["fc.bias"].numpy()
    np.testing.assert_allclose(ours.arrays["logits"] - ours.arrays["logits_unbiased"],
                               np.broadcast_to(bias, ours.arrays["logits"].shape), atol=1e-5)


def _small_images(folder, count: int, seed: int, size=(64, 48)) -> None:
    """Flips and crops of the real photos, all the same small size."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        image = _photo(int(rng.integers(0, 1000)))
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        image = image.crop((left, top, left + 3 * w // 4, top + 3 * h // 4)).resize(size, Image.BILINEAR)
        (ImageOps.mirror(image) if i % 2 else image).save(folder / f"{i:03d}.png")


def _pytorch_fid_folder_stats(folders, dims: int, batch_size: int):
    """What ``calculate_fid_given_paths`` computes, step by step: its model, its per-folder statistics."""
    from pytorch_fid.fid_score import compute_statistics_of_path
    from pytorch_fid.inception import InceptionV3 as PytorchFidInception

    model = PytorchFidInception([PytorchFidInception.BLOCK_INDEX_BY_DIM[dims]]).eval()
    return [compute_statistics_of_path(str(f), model, batch_size, dims, "cpu", num_workers=0) for f in folders]


@pytest.mark.parametrize("count", [24, pytest.param(72, marks=pytest.mark.slow)])
def test_folder_fid_matches_pytorch_fid(tmp_path, torch_home, fid_weights, count):
    """24 images per side (rank-deficient at d=64) and 72 (slow). FID is held to the exact value, computed from an
    N x N SVD of the features (tr sqrt(S1 S2) is the nuclear norm of Xc Yc^T / (N - 1)), and to pytorch-fid's."""
    a, b = tmp_path / "a", tmp_path / "b"
    _small_images(a, count, seed=1)
    _small_images(b, count, seed=2)
    (m1, s1), (m2, s2) = _pytorch_fid_folder_stats([a, b], dims=64, batch_size=8)
    expected = _scipy_fid(m1, s1, m2, s2)  # calculate_fid_given_paths's last step
    extractor = make_extractor(weights=fid_weights, device="cpu")
    # the same batch size as pytorch-fid's run makes the float32 features bit-identical (across batch sizes they
    # agree to ~1e-7, which FID, a small difference of large traces, would amplify)
    one = folder_statistics(a, extractor, layer="64", batch_size=8, keep_features=True)
    two = folder_statistics(b, extractor, layer="64", batch_size=8, keep_features=True)
    assert np.abs(one.stats.mu - m1).max() <= 1e-12 * np.abs(m1).max()
    assert np.abs(two.stats.sigma - s2).max() <= 1e-12 * np.abs(s2).max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        ours = frechet_distance(one.stats, two.stats)
        # --fd-method sqrtm reproduces pytorch-fid's arithmetic (on its own statistics: on a singular product,
        # sqrtm turns differences of 1e-17 in sigma into 1e-8 in FID)
        scipy_path = frechet_distance(m1, s1, m2, s2, method="sqrtm")
    assert ours.n1 == count and ours.dims == 64 and ours.method == "eigh"
    assert abs(scipy_path.fid - expected) <= 1e-12 * abs(expected)
    parts = ours.mean_term + ours.trace1 + ours.trace2 - 2 * ours.trace_sqrt
    assert parts == pytest.approx(ours.fid, rel=1e-12)
    features = (one.features.astype(np.float64), two.features.astype(np.float64))
    exact = parts + 2 * ours.trace_sqrt - 2 * _exact_trace_sqrt(*features)
    assert abs(ours.fid - exact) <= 1e-10 * exact
    # pytorch-fid agrees to 1e-8, or where its sqrtm is off by more (pooled stem features of random weights have
    # near-dead channels, so the covariances are near-singular even at N > d), ours is the closer to exact
    assert abs(ours.fid - expected) <= max(1e-8 * abs(expected), 1.01 * abs(expected - exact))


def test_mixed_sizes_and_batch_size_do_not_change_features(tmp_path, fid_weights):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, size in enumerate([(90, 80), (300, 200), (120, 333), (299, 299), (77, 500)]):
        _photo(i * 3).resize(size, Image.BILINEAR).save(folder / f"{i}.png")
    _photo(2).convert("L").save(folder / "gray.jpg")  # grayscale JPEG: convert('RGB') like the rest
    one = extract_features(folder, ["64", "192"], weights=fid_weights, batch_size=1, device="cpu")
    many = extract_features(folder, ["64", "192"], weights=fid_weights, batch_size=16, device="cpu")
    assert one.files == many.files and len(one.files) == 6
    for layer in ("64", "192"):
        scale = one.arrays[layer].max()
        np.testing.assert_allclose(many.arrays[layer], one.arrays[layer], rtol=1e-5, atol=1e-5 * scale)


def test_pooled_features_of_a_classification_model(tmp_path):
    from inceptionv3 import get_model

    folder = tmp_path / "one"
    folder.mkdir()
    _photo(4).save(folder / "photo.png")
    torch.manual_seed(1)
    checkpoint = tmp_path / "classifier.pth"
    torch.save(InceptionV3(init_weights=False).state_dict(), checkpoint)  # torchvision's layout
    model = get_model(checkpoint)
    features = extract_features(folder, ["2048"], model=model, device="cpu")
    preset = model.weights_info.preprocess
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(preset(folder / "photo.png")[None]), pre_logits=True)
    assert features.meta["preset"] == f"model:{preset.name}"
    np.testing.assert_allclose(features.arrays["2048"], expected.numpy(), rtol=1e-5, atol=1e-6)


# -- statistics and distances ---------------------------------------------------------------------------------


def test_streamed_statistics_match_numpy_cov():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 40)) * rng.uniform(0.1, 10, 40) + rng.uniform(-5, 50, 40)
    stats = FIDStatistics()
    for chunk in np.array_split(x, [1, 2, 50, 51, 200]):
        stats.update(chunk)
    assert stats.n == 301
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-12)
    assert np.abs(stats.sigma - np.cov(x, rowvar=False)).max() <= 1e-12 * np.abs(np.cov(x, rowvar=False)).max()
    halves = FIDStatistics().update(x[:100]).merge(FIDStatistics().update(x[100:]))
    assert np.abs(halves.sigma - stats.sigma).max() <= 1e-12 * np.abs(stats.sigma).max()


def test_statistics_combine_across_processes():
    """Three ranks (threads with a summing all-reduce), one of them empty, end with the statistics of all."""
    rng = np.random.default_rng(1)
    shards = [rng.standard_normal((n, 8)) + 3 for n in (7, 0, 20)]
    barrier = threading.Barrier(3)
    slots: list = [None] * 3
    results: list = [None] * 3

    def rank(r: int) -> None:
        def all_reduce(tensor: torch.Tensor) -> None:
            slots[r] = tensor.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            tensor.copy_(total)

        results[r] = FIDStatistics().update(shards[r])._reduce_with(all_reduce)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = np.concatenate(shards)
    for stats in results:
        assert stats.n == 27
        assert np.abs(stats.sigma - np.cov(everything, rowvar=False)).max() <= 1e-12 * 10
        np.testing.assert_allclose(stats.mu, everything.mean(axis=0), rtol=1e-12)


def _covariances(d: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ (np.eye(d) + 0.1 * rng.standard_normal((d, d)))
    y = rng.standard_normal((n, d)) * 1.1 + 0.2
    return x, y


def _exact_trace_sqrt(x: np.ndarray, y: np.ndarray) -> float:
    """tr sqrt(S1 S2) without any matrix square root: the nonzero eigenvalues of S1 S2 are the squared singular
    values of Xc Yc^T / (n - 1), an n x n matrix (exact for rank-deficient covariances too)."""
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.linalg.svd(xc @ yc.T / (len(x) - 1), compute_uv=False).sum())


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(mu1, s1, mu2, s2))


@pytest.mark.parametrize("d", [256, pytest.param(2048, marks=pytest.mark.slow)])
def test_distance_matches_scipy_sqrtm_full_rank(d):
    x, y = _covariances(d, 2 * d, seed=d)
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2, n1=2 * d, n2=2 * d)
    assert abs(ours.fid - _scipy_fid(mu1, s1, mu2, s2)) <= 1e-9 * ours.fid
    assert ours.trace_sqrt == pytest.approx(_exact_trace_sqrt(x, y), rel=1e-11)


@pytest.mark.parametrize("d", [256, pytest.param(2048, marks=pytest.mark.slow)])
def test_distance_on_rank_deficient_covariances(d):
    n = 100
    x, y = _covariances(d, n, seed=d + 1)
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    with pytest.warns(RankDeficientWarning):
        ours = frechet_distance(mu1, s1, mu2, s2, n1=n, n2=n)
    exact = _exact_trace_sqrt(x, y)
    assert ours.trace_sqrt == pytest.approx(exact, rel=1e-12)
    # scipy's sqrtm of the singular product is itself off by a few 1e-8 of FID (measured against `exact`)
    reference = _scipy_fid(mu1, s1, mu2, s2)
    exact_fid = ours.mean_term + ours.trace1 + ours.trace2 - 2 * exact
    assert abs(ours.fid - reference) <= max(1e-8 * ours.fid, 2 * abs(reference - exact_fid))


def test_distance_errors_and_warnings():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(InputError, match="mismatched dimensions"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(InputError, match="1 sample"):
        frechet_distance(mu, sigma, mu, sigma, n1=1, n2=10)
    with pytest.raises(InputError, match="at least 2"):
        FIDStatistics().update(np.ones((1, 3))).sigma  # noqa: B018
    with pytest.warns(RankDeficientWarning, match="3 samples for 3-d"):
        frechet_distance(mu, sigma, mu, sigma, n1=3, n2=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet_distance(mu, sigma, mu + 1, sigma, n1=4, n2=4).fid == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(InputError, match="fd-method"):
        frechet_distance(mu, sigma, mu, sigma, method="newton")


def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(3)
    x = torch.from_numpy(np.abs(rng.standard_normal((90, 64))))
    y = torch.from_numpy(np.abs(rng.standard_normal((70, 64))) * 1.2)
    expected = kid_features_to_metric(x, y, kid_subsets=7, kid_subset_size=50, verbose=False)
    ours = kernel_inception_distance(x, y, subsets=7, subset_size=50)
    assert ours.mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-12)
    assert ours.std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-12)
    with pytest.raises(InputError, match="at least that many"):
        kernel_inception_distance(x, y)  # 1000 per subset by default


@pytest.mark.parametrize("shuffle", [True, False])
def test_inception_score_matches_torch_fidelity(shuffle):
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.from_numpy(np.random.default_rng(4).standard_normal((103, 1008)) * 3)
    expected = isc_features_to_metric(logits, splits=10, shuffle=shuffle, rng_seed=2020)
    ours = inception_score(logits, splits=10, shuffle=shuffle)
    assert ours.mean == pytest.approx(expected["inception_score_mean"], rel=1e-12)
    assert ours.std == pytest.approx(expected["inception_score_std"], rel=1e-12)
    with pytest.raises(InputError, match="needs at least 10 images"):
        inception_score(logits[:9])


# -- files and the command line ---------------------------------------------------------------------------------


def test_statistics_files_round_trip_and_foreign_files_warn(tmp_path):
    rng = np.random.default_rng(5)
    stats = FIDStatistics().update(rng.standard_normal((30, 5)))
    stats.meta = {"preset": "pytorch-fid", "layer": "2048"}
    path = stats.save(tmp_path / "s.npz")
    with pytest.raises(InputError, match="--overwrite"):
        stats.save(path)
    again = FIDStatistics.load(path)
    assert again.n == 30 and again.meta["preset"] == "pytorch-fid"
    assert np.array_equal(again.covariance(), stats.sigma) and np.array_equal(again.mu, stats.mu)
    foreign = tmp_path / "pytorch_fid.npz"
    np.savez_compressed(foreign, mu=stats.mu, sigma=stats.sigma)  # what pytorch-fid --save-stats writes
    with pytest.warns(ProvenanceWarning, match="unknown provenance"):
        loaded = FIDStatistics.load(foreign)
    assert loaded.n == 0 and frechet_distance(loaded, again).fid == pytest.approx(0, abs=1e-9)
    np.savez(tmp_path / "bad.npz", mean=stats.mu)
    with pytest.raises(InputError, match="no 'mu' and 'sigma'"):
        FIDStatistics.load(tmp_path / "bad.npz")


def test_cli_save_stats_compare_and_refusals(tmp_path, fid_weights, capsys):
    a = tmp_path / "a"
    _small_images(a, 6, seed=3)
    common = ["--weights", str(fid_weights), "--dims", "64", "--workers", "0", "--device", "cpu", "--quiet"]
    out = tmp_path / "a.npz"
    assert main(["fid", "--save-stats", str(a), str(out), *common]) == 0  # pytorch-fid's form
    assert main(["fid", "--save-stats", str(a), str(out), *common]) == 2
    assert "--overwrite" in capsys.readouterr().err
    report = tmp_path / "r.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        assert main(["fid", str(a), str(out), *common, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert abs(result["fid"]) < 1e-9 and result["parts"]["n1"] == 6 and result["parts"]["dims"] == 64
    assert result["inputs"][1]["meta"]["preset"] == "pytorch-fid"
    assert result["inputs"][1]["meta"]["weights_sha256"] == fid_network.file_digest(fid_weights)
    other = FIDStatistics.load(out)
    other.meta["preset"] = "tf"
    other.save(tmp_path / "tf.npz")
    assert main(["fid", str(out), str(tmp_path / "tf.npz"), *common]) == 2
    assert "--force" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fid", str(out), str(tmp_path / "tf.npz"), *common, "--force"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        assert main(["fid", str(a), str(a), *common, "--kid"]) == 2
    assert "--kid-subset-size" in capsys.readouterr().err


def test_unreadable_files_stop_the_run_unless_skipped(tmp_path, fid_weights, capsys):
    folder = tmp_path / "imgs"
    _small_images(folder, 3, seed=4)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    args = ["features", str(folder), "--layers", "64,192", "--weights", str(fid_weights), "--workers", "0",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "f.npz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 unreadable" in err and "broken.png" in err and "empty.jpg" in err and "--skip-bad" in err
    with pytest.warns(UserWarning, match="skipped 2"):
        assert main([*args, "--skip-bad"]) == 0
    with np.load(tmp_path / "f.npz") as data:
        assert data["64"].shape == (3, 64) and data["192"].shape == (3, 192) and len(data["files"]) == 3
        assert json.loads(str(data["meta"]))["skipped"] == 2


def test_missing_weights_fail_offline_with_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "home"))
    with pytest.raises(DownloadError, match="INCEPTIONV3_OFFLINE"):
        load_fid_network()
    shutil.rmtree(tmp_path / "home", ignore_errors=True)
