"""FID, KID, IS and feature extraction, held to the reference implementations run here on the same inputs.

The published FID weights cannot be downloaded in tests, so a file in their exact layout (torchvision's key names,
1008 classes, legacy torch.save format, no BN counters) is built from seeded random weights whose BN statistics are
measured on real photos. pytorch-fid, torch-fidelity and torchmetrics load that same file from
$TORCH_HOME/hub/checkpoints, where torch.hub looks first, so nothing touches the network.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import PT_NAME, TORCHRUN_ENV, photo_paths, torchrun
from PIL import Image, ImageOps

from inceptionv3 import fid_network, get_entry, get_model
from inceptionv3.cli import main, model_card
from inceptionv3.errors import CheckpointError, DatasetError, DownloadError, InputError
from inceptionv3.features import Features, extract_features, folder_statistics, make_extractor
from inceptionv3.fid_math import (
    FIDStatistics,
    ProvenanceWarning,
    RankDeficientWarning,
    density_coverage,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from inceptionv3.fid_network import LAYERS, fid_inception_v3, forward_taps, load_fid_network, read_fid_weights
from inceptionv3.fid_presets import FID_PRESETS
from inceptionv3.model import InceptionV3, count_flops, count_parameters
from inceptionv3.weights import FID_MODEL

FIDELITY_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's (and so torchmetrics') name
OPENVINO_RTOL = 1e-5  # of the feature range: 5e-7 measured on every tap (12 photos)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")  # a missing file must fail here, never download


@pytest.fixture
def torch_home(tmp_path, fid_weights, monkeypatch):
    """$TORCH_HOME with the test file where torch.hub looks for the published one, under pytorch-fid's name and
    torch-fidelity's (which torchmetrics uses)."""
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(fid_weights, checkpoints / PT_NAME)
    os.link(fid_weights, checkpoints / FIDELITY_NAME)
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
    with pytest.raises(InputError, match="pool must be"):
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
    with pytest.raises(DownloadError):  # the test file is not the published one: its hash differs
        fid_network.locate_fid_weights(download=False)
    monkeypatch.setattr(fid_network, "FID_SHA256", fid_network.file_digest(fid_weights))
    assert fid_network.locate_fid_weights(download=False) == torch_home / PT_NAME
    (torch_home / PT_NAME).unlink()  # torch-fidelity's name is found too
    assert fid_network.locate_fid_weights(download=False) == torch_home / FIDELITY_NAME


def test_the_fid_network_is_a_zoo_entry(fid_weights, capsys, tmp_path, monkeypatch):
    """Listed and described like the classifiers (without a top-1), downloaded from either release under one
    full sha256; get_model refuses it rather than build a classifier's graph around its weights."""
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    entry = get_entry(FID_MODEL)
    network = fid_inception_v3()
    assert entry.num_classes == 1008 and entry.accuracy == () and entry.preprocess.crop == 299
    assert (entry.params, entry.macs) == (count_parameters(network), count_flops(network))
    assert entry.flops_mmpretrain == count_flops(network, convention="mmpretrain")
    assert [f.filename for f in entry.files] == [PT_NAME, FIDELITY_NAME]
    assert {f.hash for f in entry.files} == {"sha256:" + fid_network.FID_SHA256}
    assert fid_network.FID_SHA256.startswith("6726825d") and len(fid_network.FID_SHA256) == 64
    assert main(["list", "*fid*"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(FID_MODEL) and "pytorch-fid" in listed
    assert main(["info", FID_MODEL]) == 0
    card = capsys.readouterr().out
    for fact in ("23,850,960", "1008", PT_NAME, FIDELITY_NAME, "6726825d0af5f729", "not downloaded"):
        assert fact in card, fact
    assert model_card(FID_MODEL) in card
    with pytest.raises(InputError, match="is the FID network"):  # the classifier path would build another graph
        get_model(FID_MODEL, pretrained=fid_weights)
    assert main(["download", FID_MODEL]) == 2  # offline here: the typed error naming both releases
    err = capsys.readouterr().err
    assert "pytorch-fid/releases" in err and "torch-fidelity/releases" in err


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


def test_the_spatial_tap_is_mixed_6d_branch1x1_flattened_in_tensorflow_order(fid_weights):
    model = load_fid_network(fid_weights).model
    seen = []
    model.Mixed_6d.branch1x1.register_forward_hook(lambda _m, _i, output: seen.append(output.clone()))
    x = torch.rand(3, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        taps = forward_taps(model, x, ["spatial", "2048"])
    branch = seen[0].numpy()  # N x 192 x 17 x 17
    expected = np.stack([[branch[n, c, h, w] for h in range(17) for w in range(17) for c in range(7)]
                         for n in range(3)])
    assert taps["spatial"].shape == (3, 2023)
    np.testing.assert_array_equal(taps["spatial"].numpy(), expected)


def test_sfid_depends_on_the_flatten_order_only_against_foreign_statistics():
    rng = np.random.default_rng(0)
    pattern = rng.uniform(0, 3, size=(1, 7, 4, 4))  # one distribution, with a mean that differs per position
    maps = [pattern + rng.normal(size=(60, 7, 4, 4)) for _ in range(2)]
    hwc = [m.transpose(0, 2, 3, 1).reshape(60, -1) for m in maps]
    chw = [m.reshape(60, -1) for m in maps]
    same_order = frechet_distance(FIDStatistics().update(hwc[0]), FIDStatistics().update(hwc[1])).fid
    other_order = frechet_distance(FIDStatistics().update(chw[0]), FIDStatistics().update(chw[1])).fid
    assert abs(same_order - other_order) <= 1e-9 * same_order  # a permutation of both sides: the same distance
    mixed = frechet_distance(FIDStatistics().update(chw[0]), FIDStatistics().update(hwc[1])).fid
    assert mixed > 3 * same_order  # (c, h, w) features against (h, w, c) statistics: a wrong, larger number


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

    theirs = [layer for layer in LAYERS if layer != "spatial"]  # sFID's tap is not one of torch-fidelity's
    reference = FeatureExtractorInceptionV3("inception-v3-compat", theirs,
                                            feature_extractor_weights_path=str(fid_weights))
    with torch.no_grad():
        expected = reference(_stack01(same_size_folder))
    ours = extract_features(same_size_folder, theirs, preset="tf", weights=fid_weights, batch_size=2, device="cpu")
    assert ours.meta["preset"] == "tf"
    for layer, value in zip(theirs, expected, strict=True):
        assert _relative_to_range(ours.arrays[layer], value.numpy()) <= 1e-6, layer
    bias = torch.load(fid_weights, weights_only=True)["fc.bias"].numpy()
    np.testing.assert_allclose(ours.arrays["logits"] - ours.arrays["logits_unbiased"],
                               np.broadcast_to(bias, ours.arrays["logits"].shape), atol=1e-5)


def _mixed_folder(folder) -> list:
    """Real photos at several sizes and modes, up- and downscaled to 299: grayscale JPEG, RGBA PNG, palette GIF."""
    folder.mkdir()
    for i, size in enumerate([(90, 80), (640, 427), (120, 333), (299, 299)]):
        _photo(i * 5).resize(size, Image.BILINEAR).save(folder / f"{i}.png")
    _photo(1).convert("L").resize((400, 300)).save(folder / "gray.jpg", quality=90)
    _photo(2).convert("RGBA").resize((200, 150)).save(folder / "alpha.png")
    _photo(3).convert("P").resize((150, 200)).save(folder / "palette.gif")
    return sorted(folder.iterdir())


def test_clean_preset_matches_clean_fid(tmp_path):
    """clean-fid's own dataset (decode, make_resizer("PIL", False, "bicubic", (299, 299)), ToTensor) and the
    (x - 128) / 128 its network applies: bit-identical inputs. (Its network is a TorchScript of the same 2015 graph,
    downloaded at run time, so it is not run here.)"""
    from cleanfid.resize import make_resizer
    from cleanfid.utils import ResizeDataset

    files = _mixed_folder(tmp_path / "mixed")
    dataset = ResizeDataset([str(f) for f in files], mode="clean")
    resizer = make_resizer("PIL", False, "bicubic", (299, 299))
    for i, path in enumerate(files):
        ours = FID_PRESETS["clean"].load(path)
        assert ours.shape == (3, 299, 299) and ours.dtype == torch.float32
        assert torch.equal(ours, (dataset[i] - 128) / 128), path.name
        rgb = np.array(Image.open(path).convert("RGB"))
        assert torch.equal(ours, (torch.from_numpy(resizer(rgb)).permute(2, 0, 1) - 128) / 128), path.name
    # and it is not the other presets: bicubic on float differs from bilinear by far more than rounding
    other = FID_PRESETS["pytorch-fid"].load(files[1])
    assert (FID_PRESETS["clean"].load(files[1]) - other).abs().max() > 1e-2


def test_torchmetrics_preset_matches_torchmetrics_fid(tmp_path, torch_home, fid_weights):
    """torchmetrics' FrechetInceptionDistance with its defaults (antialiased resize since 1.8), weights from
    $TORCH_HOME as it looks for them, fed each image as the uint8 tensor Pillow decodes; against our folder FID with
    the torchmetrics preset on the same files. Features at d=64 from 72 images per side (full rank)."""
    import inspect

    from torchmetrics.image.fid import FrechetInceptionDistance

    assert inspect.signature(FrechetInceptionDistance).parameters["antialias"].default is True
    a, b = tmp_path / "a", tmp_path / "b"
    _small_images(a, 72, seed=5, size=(120, 90))  # upscaled to 299
    _small_images(b, 72, seed=6, size=(480, 360), suffix=".jpg")  # downscaled, where antialiasing matters
    reference = FrechetInceptionDistance(feature=64)
    for folder, real in ((a, True), (b, False)):
        files = sorted(folder.iterdir())
        for start in range(0, len(files), 8):  # the batches ours runs: float32 rounding depends on them
            images = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files[start:start + 8]]
            reference.update(torch.stack(images).permute(0, 3, 1, 2), real=real)
    expected = float(reference.compute())
    extractor = make_extractor("torchmetrics", weights=fid_weights, device="cpu")
    one = folder_statistics(a, extractor, layer="64", batch_size=8)
    two = folder_statistics(b, extractor, layer="64", batch_size=8)
    ours = frechet_distance(one.stats, two.stats)
    assert one.stats.meta["preset"] == "torchmetrics" and ours.n1 == 72
    assert abs(ours.fid - expected) <= 1e-6 * abs(expected)
    tf_input = FID_PRESETS["tf"].load(sorted(b.iterdir())[0])
    assert (FID_PRESETS["torchmetrics"].load(sorted(b.iterdir())[0]) - tf_input).abs().max() > 1e-2


def test_rank_shards_are_whole_batches_without_repeats(monkeypatch):
    from inceptionv3 import features

    files = [f"{i}.png" for i in range(8)]
    shards = {}
    for world in (2, 3, 4):
        for rank in range(world):
            monkeypatch.setattr(features, "rank_world", lambda rank=rank, world=world: (rank, world))
            shards[world, rank] = features._shard(files, batch_size=3)
        assert sorted(name for r in range(world) for name in shards[world, r]) == sorted(files)
    assert shards[2, 0] == ["0.png", "1.png", "2.png", "6.png", "7.png"] and shards[2, 1] == ["3.png", "4.png", "5.png"]
    assert shards[3, 2] == ["6.png", "7.png"] and shards[4, 3] == []




@pytest.fixture(scope="module")
def nine_files(tmp_path_factory):
    """8 small images and, sorting last, a broken one: batches of 3 give rank 1 of 2 the batch holding it."""
    folder = tmp_path_factory.mktemp("torchrun") / "nine"
    _small_images(folder, 8, seed=7)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def _torchrun_fid(folder, out, weights, *extra) -> subprocess.Popen:
    """``fid --save-stats`` under torchrun, started: ``communicate()`` waits for it."""
    command = torchrun("-m", "inceptionv3", "fid", "--save-stats", str(folder), str(out), "--weights", str(weights),
                       "--batch-size", "3", "--workers", "0", "--device", "cpu", "--quiet", *extra)
    env = {**TORCHRUN_ENV, "INCEPTIONV3_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a torchrun launch
def test_torchrun_statistics_equal_one_process(tmp_path, fid_weights, nine_files):
    """Two processes under torchrun (gloo, CPU) write the statistics of a folder, sharded by whole batches of 3
    (5 and 3 good images: nothing padded in twice; the broken file skipped); one process in this test computes them
    alone. Same batches, so the same float32 features: mean and covariance agree to 1e-12."""
    out = tmp_path / "two.npz"
    running = _torchrun_fid(nine_files, out, fid_weights, "--skip-bad")  # while this process computes its own
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process ran: convolutions round differently across thread counts
    try:
        with pytest.warns(UserWarning, match="skipped 1"):
            one = folder_statistics(nine_files, make_extractor(weights=fid_weights, device="cpu"), batch_size=3,
                                    skip_bad=True).stats
    finally:
        torch.set_num_threads(threads)
    stdout, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr[-3000:]
    # one report: the two processes joined one group (alone, each would be its own rank 0 and print)
    assert stdout.count("saved statistics of 8 images") == 1, stdout
    two = FIDStatistics.load(out)
    assert two.n == one.n == 8 and two.meta["skipped"] == 1 and two.meta["files_digest"] == one.meta["files_digest"]
    assert np.abs(two.mu - one.mu).max() <= 1e-12 * np.abs(one.mu).max()
    assert np.abs(two.covariance() - one.sigma).max() <= 1e-12 * np.abs(one.sigma).max()


def test_sharded_features_come_back_in_file_order(tmp_path, fid_weights, nine_files, monkeypatch):
    """`features` under torchrun: each process runs its whole batches of 3 (batch b to rank b mod 2), then every
    row is gathered back into file order. Both shards are run here, then gathered through a fake all-gather: the
    result equals one unsharded run bit for bit. (The torchrun wiring itself is the fid tests' above.)"""
    from inceptionv3 import features

    with pytest.warns(UserWarning, match="skipped 1"):
        whole = extract_features(nine_files, ["64"], weights=fid_weights, device="cpu", batch_size=3, skip_bad=True)
    shards = []
    for rank in range(2):
        monkeypatch.setattr(features, "rank_world", lambda rank=rank: (rank, 2))
        monkeypatch.setattr(features, "fail_together", lambda error: None)
        monkeypatch.setattr(features, "gather_in_order", lambda files, kept, arrays: (kept, arrays))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            part = extract_features(nine_files, ["64"], weights=fid_weights, device="cpu", batch_size=3,
                                    skip_bad=True)
        shards.append((part.files, part.arrays))
    monkeypatch.undo()
    assert shards[0][0] == whole.files[:3] + whole.files[6:] and shards[1][0] == whole.files[3:6]  # 0 1 2 | 3 4 5 | 6 7
    files = [str(p) for p in sorted(nine_files.iterdir())]
    names, arrays = features.gather_in_order(files, shards[1][0], shards[1][1], all_gather=lambda part: shards)
    assert names == whole.files and np.array_equal(arrays["64"], whole.arrays["64"])


@pytest.mark.slow  # a torchrun launch
def test_torchrun_stops_when_one_process_meets_a_bad_file(tmp_path, fid_weights, nine_files):
    """Only one process's share holds the broken file: the run ends (no process left waiting in an all-reduce)
    with the typed error naming it, and nothing is written."""
    done = _torchrun_fid(nine_files, tmp_path / "none.npz", fid_weights)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode != 0
    assert "1 unreadable image(s)" in stderr and "zz_broken.png" in stderr and "--skip-bad" in stderr
    assert not (tmp_path / "none.npz").exists()


def _summing_all_reduce(r: int, slots: list, barrier: threading.Barrier):
    """Rank ``r``'s all-reduce in a group of threads: every rank's tensor becomes the sum of all of them."""
    def all_reduce(tensor: torch.Tensor) -> None:
        slots[r] = tensor.clone()
        barrier.wait()
        total = sum(slots)
        barrier.wait()
        tensor.copy_(total)
    return all_reduce


def test_processes_agree_on_a_failure_before_any_waits_for_the_others():
    """Three ranks (threads with a summing all-reduce): rank 1 failed; it raises its own error, the others a
    DatasetError naming rank 1, and none is left waiting. (torchrun's agent also ends the others, but only once
    one has exited: not every launcher does.)"""
    from inceptionv3 import features

    barrier = threading.Barrier(3, timeout=20)  # a rank that skipped the all-reduce breaks it: no hang
    slots: list = [None] * 3
    raised: list = [None] * 3

    def rank(r: int) -> None:
        all_reduce = _summing_all_reduce(r, slots, barrier)

        try:
            features._agree(DatasetError("bad file") if r == 1 else None, r, 3, all_reduce)
        except DatasetError as exc:
            raised[r] = str(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert raised == ["process(es) 1 of this torchrun failed (see their error)", "bad file",
                      "process(es) 1 of this torchrun failed (see their error)"]
    features._agree(None, 0, 2, lambda tensor: None)  # nobody failed: nothing raised


def _small_images(folder, count: int, seed: int, size=(64, 48), suffix: str = ".png") -> None:
    """Flips and crops of the real photos, all the same size."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        image = _photo(int(rng.integers(0, 1000)))
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        image = image.crop((left, top, left + 3 * w // 4, top + 3 * h // 4)).resize(size, Image.BILINEAR)
        (ImageOps.mirror(image) if i % 2 else image).save(folder / f"{i:03d}{suffix}")


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


def test_openvino_backend_features_stay_near_eager(tmp_path, fid_weights, monkeypatch):
    """The taps exported as one OpenVINO graph: every tap within OPENVINO_RTOL of the feature range of eager's,
    on four real photos (mixed sizes); the default stays eager, and the backend is recorded."""
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "home"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(90, 80), (640, 427), (299, 299), (120, 333)]):
        _photo(i * 3).resize(size, Image.BILINEAR).save(folder / f"{i}.png")
    layers = ["2048", "logits_unbiased", "64", "spatial"]  # spatial: a tap captured inside a block, by a hook
    eager = extract_features(folder, layers, weights=fid_weights, batch_size=2, device="cpu")
    fast = extract_features(folder, layers, weights=fid_weights, batch_size=2, device="cpu", backend="openvino")
    assert eager.meta["backend"] == "eager" and fast.meta["backend"] == "openvino" and fast.files == eager.files
    for layer in layers:
        assert fast.arrays[layer].shape == eager.arrays[layer].shape
        assert _relative_to_range(fast.arrays[layer], eager.arrays[layer]) <= OPENVINO_RTOL, layer
    with pytest.raises(InputError, match="--backend"):
        make_extractor(weights=fid_weights, device="cpu", backend="onnx")


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
        all_reduce = _summing_all_reduce(r, slots, barrier)

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


def test_distance_matches_scipy_sqrtm_at_d256():
    """Full rank (N = 2d) and rank-deficient (N = 100): against scipy's sqrtm (pytorch-fid's function) and the
    exact value from an N x N SVD, which needs no matrix square root."""
    d = 256
    x, y = _covariances(d, 2 * d, seed=d)
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2, n1=2 * d, n2=2 * d)
    assert abs(ours.fid - _scipy_fid(mu1, s1, mu2, s2)) <= 1e-9 * ours.fid
    assert ours.trace_sqrt == pytest.approx(_exact_trace_sqrt(x, y), rel=1e-11)
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


def _non_commuting_pair(d: int, seed: int):
    """S1 = L L^T and S2 = L^-T D L^-1 (L unit lower triangular, well conditioned): S1 S2 = L D L^-1 has the
    eigenvalues D, so tr sqrt(S1 S2) = sum sqrt(D) exactly, with no decomposition to build or check it."""
    from scipy.linalg import solve_triangular

    rng = np.random.default_rng(seed)
    lower = np.eye(d) + np.tril(rng.standard_normal((d, d)), -1) * (0.3 / np.sqrt(d))
    inverse = solve_triangular(lower, np.eye(d), lower=True)
    values = rng.uniform(0.01, 4.0, d)
    return lower @ lower.T, (inverse.T * values) @ inverse, float(np.sqrt(values).sum())


@pytest.mark.slow  # ~20 s, two thirds of it in scipy's sqrtm
def test_distance_at_d2048_full_rank_and_rank_deficient():
    """FID's own size. Full rank: a non-commuting pair with a closed-form trace (and, at d = 512, where it takes
    0.2 s instead of 10, scipy's sqrtm: pytorch-fid's function). Rank-deficient (N = 100 < d): the exact value
    from a 100 x 100 SVD."""
    d = 2048
    s1, s2, exact = _non_commuting_pair(d, seed=11)
    mu1, mu2 = np.zeros(d), np.full(d, 0.01)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours.trace_sqrt == pytest.approx(exact, rel=1e-13)  # 3e-16 measured
    s1, s2, _ = _non_commuting_pair(512, seed=11)
    mu1, mu2 = np.zeros(512), np.full(512, 0.01)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours.fid - _scipy_fid(mu1, s1, mu2, s2)) <= 1e-12 * ours.fid
    n = 100
    x, y = _covariances(d, n, seed=d + 1)
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    with pytest.warns(RankDeficientWarning):
        ours = frechet_distance(mu1, s1, mu2, s2, n1=n, n2=n)
    assert ours.trace_sqrt == pytest.approx(_exact_trace_sqrt(x, y), rel=1e-13)  # 1e-16 measured


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


# -- precision/recall, features files, the pytorch-fid file set ------------------------------------------------


def test_precision_recall_matches_torch_fidelity_in_any_block_size():
    """torch-fidelity's whole-matrix and chunked paths against ours with the default block and with blocks of a
    few rows (the bounded-memory path): the same counts, and torch-fidelity's F-score rule."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

    rng = np.random.default_rng(8)
    generated = torch.from_numpy(rng.standard_normal((130, 32)).astype(np.float32))
    real = torch.from_numpy((rng.standard_normal((110, 32)) * 1.3 + 0.2).astype(np.float32))
    full = calculate_precision_recall_full(generated, real, 3, 10000)
    assert calculate_precision_recall_part(generated, real, 3, 17) == full
    for block in (2**24, 500):
        ours = precision_recall(generated, real, max_block=block)
        assert round(ours.precision * 130) == round(full[0] * 130) and round(ours.recall * 110) == round(full[1] * 110)
        assert ours.precision == pytest.approx(full[0], rel=1e-6) and ours.recall == pytest.approx(full[1], rel=1e-6)
        assert 0 < ours.recall < ours.precision < 1  # a wider real set: a real test, not all-in or all-out
        assert ours.f_score == pytest.approx(2 * full[0] * full[1] / (full[0] + full[1]), rel=1e-6)
    with pytest.raises(InputError, match="more than k images"):
        precision_recall(generated[:3], real)


def test_density_and_coverage_match_prdc_in_any_block_size():
    """prdc's compute_prdc on the same float64 features: density (which can exceed 1) and coverage, with the
    default block and with blocks of a few rows; a shifted real set so that neither is trivially 0 or 1."""
    from prdc import compute_prdc

    rng = np.random.default_rng(5)
    generated = rng.standard_normal((120, 24))
    real = rng.standard_normal((100, 24)) * 1.3 + 1.0
    theirs = compute_prdc(real_features=real, fake_features=generated, nearest_k=5)
    for block in (2**24, 300):
        ours = density_coverage(generated, real, k=5, max_block=block)
        assert ours.density == pytest.approx(theirs["density"], rel=1e-12)
        assert ours.coverage == pytest.approx(theirs["coverage"], rel=1e-12)
    assert 0 < ours.coverage < 1 and ours.density > 0
    crowded = np.repeat(real[:1], 50, axis=0) + 1e-3 * rng.standard_normal((50, 24))  # all round one real sample
    assert precision_recall(crowded, real).precision == 1.0  # precision calls them all good
    assert density_coverage(crowded, real).coverage <= 0.1  # coverage sees that they cover few real samples
    with pytest.raises(InputError, match="more than k images"):
        density_coverage(generated[:5], real)


def _features_file(path, n: int, seed: int, scale: float, meta: dict) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arrays = {"64": (rng.standard_normal((n, 64)) * scale).astype(np.float32),
              "logits_unbiased": (rng.standard_normal((n, 1008)) * 3).astype(np.float32)}
    Features([f"{i}.png" for i in range(n)], arrays, dict(meta, layers=list(arrays), n=n)).save(path)
    return arrays


def test_cli_scores_saved_features_against_each_reference(tmp_path, capsys):
    """Two ``inceptionv3 features`` files, no network: FID against pytorch-fid's function on np.cov, KID, IS and
    precision/recall against torch-fidelity's on the same arrays; IS refused on weights other than the
    published FID network's unless forced."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    meta = {"preset": "tf", "weights": "test", "weights_sha256": "ab" * 32}
    one = _features_file(tmp_path / "gen.npz", 90, seed=1, scale=1.0, meta=meta)
    two = _features_file(tmp_path / "real.npz", 80, seed=2, scale=1.2, meta=meta)
    report = tmp_path / "r.json"
    args = ["fid", str(tmp_path / "gen.npz"), str(tmp_path / "real.npz"), "--dims", "64", "--kid",
            "--kid-subsets", "5", "--kid-subset-size", "40", "--isc", "--prc", "--prdc", "--json", str(report)]
    assert main(args) == 2
    assert "IS is defined on the published FID network" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "preset tf" in printed and "precision:" in printed
    result = json.loads(report.read_text())
    x, y = one["64"].astype(np.float64), two["64"].astype(np.float64)
    expected_fid = calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert result["fid"] == pytest.approx(expected_fid, rel=1e-9)
    kid = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=5, kid_subset_size=40,
                                 verbose=False)
    assert result["kid"]["mean"] == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-12)
    isc = isc_features_to_metric(torch.from_numpy(one["logits_unbiased"].astype(np.float64)), splits=10,
                                 shuffle=True, rng_seed=2020)
    assert result["isc"]["mean"] == pytest.approx(isc["inception_score_mean"], rel=1e-12)
    precision, recall = calculate_precision_recall_full(torch.from_numpy(one["64"]), torch.from_numpy(two["64"]),
                                                        3, 10000)
    assert result["prc"]["precision"] == pytest.approx(precision, rel=1e-6)
    assert result["prc"]["recall"] == pytest.approx(recall, rel=1e-6)
    from prdc import compute_prdc

    theirs = compute_prdc(real_features=y, fake_features=x, nearest_k=5)
    assert result["prdc"]["density"] == pytest.approx(theirs["density"], rel=1e-12)
    assert result["prdc"]["coverage"] == pytest.approx(theirs["coverage"], rel=1e-12)
    assert main(["fid", str(tmp_path / "gen.npz"), str(tmp_path / "real.npz"), "--dims", "192"]) == 2
    assert "holds 64, logits_unbiased, not 192" in capsys.readouterr().err


def test_pytorch_fid_glob_reads_exactly_pytorch_fids_files(tmp_path, fid_weights, monkeypatch):
    """pytorch-fid looks for lower-case extensions in the folder itself only (and reads .ppm). The default set
    differs here, so it warns with both counts; --pytorch-fid-glob takes the list pytorch-fid's own code builds."""
    import pytorch_fid.fid_score as pytorch_fid_score

    folder = tmp_path / "imgs"
    _small_images(folder, 3, seed=9)
    (folder / "001.png").rename(folder / "001.PNG")
    (folder / "sub").mkdir()
    (folder / "002.png").rename(folder / "sub" / "002.png")
    _photo(3).resize((40, 30)).save(folder / "x.ppm")
    seen = []
    monkeypatch.setattr(pytorch_fid_score, "calculate_activation_statistics",
                        lambda files, *rest, **kw: seen.append([os.fspath(f) for f in files]) or (0, 0))
    pytorch_fid_score.compute_statistics_of_path(str(folder), None, 1, 64, "cpu")
    assert [os.path.basename(f) for f in seen[0]] == ["000.png", "x.ppm"]
    with pytest.warns(UserWarning, match="3 images found here, but pytorch-fid would read 2"):
        default = extract_features(folder, ["64"], weights=fid_weights, device="cpu")
    assert sorted(os.path.basename(f) for f in default.files) == ["000.png", "001.PNG", "002.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs = extract_features(folder, ["64"], weights=fid_weights, device="cpu", pytorch_fid_glob=True)
    assert theirs.files == seen[0]


# -- FIDMetric (training loops) ---------------------------------------------------------------------------------


def _uint8_batches(folder, size: int):
    files = sorted(folder.iterdir())
    images = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    return [torch.stack(images[i:i + size]) for i in range(0, len(images), size)]


@pytest.mark.filterwarnings("ignore::inceptionv3.fid_math.RankDeficientWarning")
def test_fid_metric_equals_folder_fid_and_keeps_real_statistics(tmp_path, fid_weights, monkeypatch):
    """Batches fed as uint8 tensors give the folder FID of the same files (the same batches: bit-identical
    features); reset with reset_real=False keeps the real side; real statistics from a file work; compute()
    leaves each process's own statistics untouched."""
    from inceptionv3 import FIDMetric

    real_dir, fake_dir = tmp_path / "real", tmp_path / "fake"
    _small_images(real_dir, 4, seed=21)
    _small_images(fake_dir, 4, seed=22, size=(50, 70))
    extractor = make_extractor("tf", weights=fid_weights, device="cpu")
    expected = frechet_distance(folder_statistics(fake_dir, extractor, layer="64", batch_size=2).stats,
                                folder_statistics(real_dir, extractor, layer="64", batch_size=2).stats).fid
    metric = FIDMetric("tf", weights=fid_weights, layer="64", device="cpu", reset_real=False)
    for batch in _uint8_batches(real_dir, 2):
        metric.update(batch, real=True)
    for batch in _uint8_batches(fake_dir, 2):
        metric.update(batch, real=False)
    assert metric.compute().fid == pytest.approx(expected, rel=1e-12)
    saved_fake = copy.deepcopy(metric.fake)
    metric.reset()
    assert metric.fake.n == 0 and metric.real.n == 4
    with pytest.raises(InputError, match="at least 2 images per side"):
        metric.compute()
    for batch in _uint8_batches(fake_dir, 2):
        metric.update(batch, real=False)
    assert metric.compute().fid == pytest.approx(expected, rel=1e-12)
    metric.real.meta = metric.meta()
    stats_file = metric.real.save(tmp_path / "real.npz")
    from_file = FIDMetric("tf", weights=fid_weights, layer="64", device="cpu", real_stats=stats_file)
    from_file.fake = copy.deepcopy(saved_fake)
    assert from_file.compute().fid == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match="fake images only"):
        from_file.update(_uint8_batches(real_dir, 2)[0], real=True)
    with pytest.raises(InputError, match="uint8"):
        metric.update(_uint8_batches(real_dir, 2)[0].float(), real=False)
    other_rank = FIDStatistics().update(np.random.default_rng(0).standard_normal((5, 64)))
    monkeypatch.setattr(FIDStatistics, "all_reduce", lambda self, group=None: self.merge(other_rank))
    local_fake_n = metric.fake.n
    combined = metric.compute()
    assert (combined.n1, combined.n2) == (local_fake_n + 5, 4 + 5)  # both sides reduced
    assert (metric.fake.n, metric.real.n) == (local_fake_n, 4)  # the process's own statistics unchanged
    assert from_file.compute().n2 == 4  # a file's statistics are the same on every process: not reduced


def test_feature_extraction_turns_tf32_off_and_restores_it(fid_weights, monkeypatch):
    """On Ampere and later GPUs cuDNN convolves in TF32 by default; features are extracted with full float32
    precision, and the user's setting comes back afterwards."""
    from inceptionv3 import features

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    seen = []
    monkeypatch.setattr(features, "forward_taps", lambda model, x, layers: seen.append(
        (conv.fp32_precision, matmul.fp32_precision)) or {"64": x.new_zeros(len(x), 64)})
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        features.make_extractor("tf", weights=fid_weights, device="cpu").taps(torch.zeros(1, 3, 8, 8), ["64"])
        assert seen == [("ieee", "ieee")]
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def _stats_file(path, mu, sigma, **extra):
    np.savez_compressed(path, mu=mu, sigma=sigma, **extra)
    return path


def test_statistics_files_are_read_key_by_key_within_bounds(tmp_path):
    """An ADM-style reference batch keeps gigabytes of images beside mu and sigma: only mu, sigma, meta and n are
    read (before, every member was, and a 3 MB file with one extra deflated member cost 3 GB). Declared sizes
    are bounded before anything is allocated, and pickles are never loaded."""
    import tracemalloc
    import zipfile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    mu, sigma = x.mean(axis=0), np.cov(x, rowvar=False)
    big = _stats_file(tmp_path / "ref.npz", mu, sigma, arr_0=np.zeros((300, 1024, 1024), np.uint8))
    assert big.stat().st_size < 2_000_000  # 300 MB of pixels, deflated
    tracemalloc.start()
    loaded = FIDStatistics.load(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000 and np.array_equal(loaded.mu, mu) and np.allclose(loaded.covariance(), sigma)

    declared = tmp_path / "declared.npz"  # a sigma header claiming 10^5 x 10^5 float64 (80 GB), then nothing
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = (100_000, 100_000)
    with zipfile.ZipFile(declared, "w") as archive:
        with archive.open("sigma.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
        np.lib.format.write_array(archive.open("mu.npy", "w"), mu)
    with pytest.raises(InputError, match=r"declared.npz: array 'sigma': declares \(100000, 100000\)"):
        FIDStatistics.load(declared)

    cases = {
        "pickled": dict(mu=np.array([object()] * 8, dtype=object), sigma=sigma),
        "string mu": dict(mu=np.array(["a"] * 8), sigma=sigma),
        "list meta": dict(mu=mu, sigma=sigma, meta=np.array(["a", "b"])),
        "asymmetric": dict(mu=mu, sigma=sigma + np.triu(np.ones((8, 8)), 1)),
        "not PSD": dict(mu=mu, sigma=sigma - 2 * np.eye(8) * np.linalg.eigvalsh(sigma)[-1]),
    }
    expected = {"pickled": "Python objects", "string mu": "must be numbers", "list meta": "one JSON string",
                "asymmetric": "not symmetric", "not PSD": "negative eigenvalue"}
    for name, arrays in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(path, **arrays) if name != "pickled" else np.savez(path, **arrays, allow_pickle=True)
        with pytest.raises(InputError, match=expected[name]):
            FIDStatistics.load(path)


def test_constant_features_are_warned_about_not_printed_as_a_perfect_score(tmp_path, capsys):
    """A broken FID network gives every image the same features; FID 0.000000 then looked like a perfect match."""
    rng = np.random.default_rng(1)
    Features([f"{i}.png" for i in range(5)], {"2048": np.ones((5, 2048), np.float32)}, {"layer": "2048"}).save(
        tmp_path / "constant.npz")
    Features([f"{i}.png" for i in range(5)], {"2048": rng.normal(size=(5, 2048)).astype(np.float32)},
             {"layer": "2048"}).save(tmp_path / "varied.npz")
    assert main(["fid", str(tmp_path / "constant.npz"), str(tmp_path / "varied.npz")]) == 0
    printed = capsys.readouterr()
    assert "constant.npz has the same features" in printed.err and "varied.npz" not in printed.err
    assert printed.out.startswith("FID: ")
