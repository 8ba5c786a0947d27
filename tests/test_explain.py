"""Grad-CAM and its family, held to the grad-cam package and captum run here on the same module objects."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import photo_paths
from PIL import Image

from inceptionv3 import get_model
from inceptionv3.cli import main
from inceptionv3.errors import InputError
from inceptionv3.explain import METHODS, PER_CHANNEL_METHODS, forward_passes, grad_cam, heatmap_on_photo, overlay
from inceptionv3.inference import Classifier
from inceptionv3.preprocess import PRESETS


@pytest.fixture(scope="module")
def model(trained_like_checkpoint):
    return get_model(trained_like_checkpoint).eval()


@pytest.fixture(scope="module")
def batch(model):
    """Two real photos through the model's own preprocessing, N x 3 x 299 x 299."""
    preprocess = model.weights_info.preprocess
    return preprocess.batch([str(p) for p in photo_paths()[:2]])


# What float32 rounding alone can move a map value (the maps are scaled to [0, 1]). A batch may take other
# convolution kernels than a single image (AMD's AVX-512 and Intel's AMX paths differ), so the sums inside each
# block are added in another order. One block's sum of up to 2048 x 3 x 3 products moves by about
# sqrt(18432) * eps relative; the errors of the network's 16 blocks add like a random walk; four standard
# deviations of that: 4 * sqrt(16) * sqrt(18432) * 1.19e-7 = 2.6e-4. A real mix-up between images moves maps by
# 0.1 or more, 400 times this.
MAP_ROUNDING = 4 * 16 ** 0.5 * (2048 * 9) ** 0.5 * torch.finfo(torch.float32).eps


def _argmax_pixel(maps: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in np.unravel_index(m.argmax(), m.shape)) for m in maps]


@pytest.mark.parametrize("method", [m for m in METHODS if m not in PER_CHANNEL_METHODS])
def test_maps_match_the_grad_cam_package_square_and_not(model, batch, method):
    """grad-cam 1.5.7's class of the same name with ClassifierOutputTarget on the same module object: one photo
    at 299 x 299, and for Grad-CAM also one at 224 x 160 (the resize path is shared by every method). The
    reference runs on a copy, because it backpropagates into the parameters' .grad."""
    import pytorch_grad_cam as reference
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": reference.GradCAM, "gradcam++": reference.GradCAMPlusPlus, "hirescam": reference.HiResCAM,
               "xgradcam": reference.XGradCAM, "layercam": reference.LayerCAM, "eigencam": reference.EigenCAM}
    reference_model = copy.deepcopy(model)
    wide = torch.nn.functional.interpolate(batch[1:], size=(160, 224), mode="bilinear", align_corners=False)
    for x, targets in ((batch[:1], [3]), (wide, [500]))[: 2 if method == "gradcam" else 1]:
        ours = grad_cam(model, x, targets, method=method).maps.numpy()
        with classes[method](model=reference_model, target_layers=[reference_model.Mixed_7c]) as cam:
            expected = cam(x, [ClassifierOutputTarget(t) for t in targets])
        assert ours.shape == expected.shape == (len(x), *x.shape[-2:])
        assert np.abs(ours - expected).max() <= 1e-5  # 3e-6 measured
        assert _argmax_pixel(ours) == _argmax_pixel(expected)
    assert all(p.grad is None for p in model.parameters())  # ours never touched .grad


@pytest.mark.parametrize(("method", "aug_smooth", "eigen_smooth"),
                         [("gradcam", True, False), ("layercam", False, True)])
def test_smoothing_matches_the_grad_cam_package(model, batch, method, aug_smooth, eigen_smooth):
    """grad-cam's aug_smooth (its six ttach augmentations, each with its own top-1 when no target is given) and
    eigen_smooth, on a real photo with no target."""
    import pytorch_grad_cam as reference

    classes = {"gradcam": reference.GradCAM, "gradcam++": reference.GradCAMPlusPlus, "layercam": reference.LayerCAM}
    reference_model = copy.deepcopy(model)
    x = batch[:1]
    ours = grad_cam(model, x, None, method=method, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth).maps.numpy()
    with classes[method](model=reference_model, target_layers=[reference_model.Mixed_7c]) as cam:
        expected = cam(x, None, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    assert np.abs(ours - expected).max() <= 1e-5
    assert _argmax_pixel(ours) == _argmax_pixel(expected)
    plain = grad_cam(model, x, None, method=method).maps.numpy()
    assert np.abs(ours - plain).max() > 1e-3  # smoothing changes the map: the options are not ignored


@pytest.mark.parametrize("method", PER_CHANNEL_METHODS)
def test_per_channel_methods_match_the_grad_cam_package_at_two_sizes_and_both_kinds_of_layer(model, batch, method):
    """Score-CAM and Ablation-CAM run the network once per channel, so they are held to grad-cam at a 64-channel
    layer on small inputs (96 x 96 and 80 x 112): a block (Conv2d_2b_3x3; Ablation-CAM reruns only what follows
    it) and a module inside one (Mixed_5b.branch1x1; the whole network reruns with its output replaced)."""
    import pytorch_grad_cam as reference
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    reference_class = {"scorecam": reference.ScoreCAM, "ablationcam": reference.AblationCAM}[method]
    reference_model = copy.deepcopy(model)
    for size, layer, targets in (((96, 96), "Conv2d_2b_3x3", [3, 500]), ((80, 112), "Mixed_5b.branch1x1", [7])):
        x = torch.nn.functional.interpolate(batch[:len(targets)], size=size, mode="bilinear", align_corners=False)
        passes = []
        ours = grad_cam(model, x, targets, layer=layer, method=method, progress=passes.append).maps.numpy()
        assert sum(passes) == 64 * len(targets) and len(passes) > 1  # in batches, each reported
        with reference_class(model=reference_model, target_layers=[reference_model.get_submodule(layer)]) as cam:
            expected = cam(x, [ClassifierOutputTarget(t) for t in targets])
        assert np.abs(ours - expected).max() <= 1e-5  # 4e-7 measured
        assert _argmax_pixel(ours) == _argmax_pixel(expected)
    assert forward_passes(model, method, "Mixed_7c") == 1 + 2048 and forward_passes(model, "gradcam") == 1
    assert all(p.grad is None for p in model.parameters()) and not model.Mixed_5b.branch1x1._forward_hooks


def test_layer_map_matches_captum_layer_gradcam(model, batch):
    from captum.attr import LayerGradCam

    attribution = LayerGradCam(model, model.Mixed_7c).attribute(batch, target=[3, 500], relu_attributions=True)
    ours = grad_cam(model, batch, [3, 500]).layer_maps

    def min_max(m):
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / m.amax(dim=(1, 2), keepdim=True)

    assert ours.shape == (2, 8, 8)
    assert (min_max(attribution.detach()[:, 0]) - min_max(ours)).abs().max() <= 1e-6


def test_overlay_matches_show_cam_on_image():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.random((37, 53)).astype(np.float32)
    expected = show_cam_on_image(rgb / 255, mask, use_rgb=True)
    assert np.abs(overlay(rgb, mask).astype(int) - expected.astype(int)).max() <= 1


def test_map_properties_and_the_model_left_as_it_was(model, batch):
    """In [0, 1] and input-sized; a batch equals single calls; the target matters; frozen parameters work; hooks,
    train mode and the caller's grad mode are restored; and (Adebayo et al.'s sanity check) re-initialising
    Mixed_7c and the head changes the map, so it reflects the learned weights, not image edges alone. At 160 px:
    the properties hold at any size, and it is cheaper."""
    small = torch.nn.functional.interpolate(batch, size=(160, 160), mode="bilinear", align_corners=False)
    both = grad_cam(model, small, [3, 500])
    assert both.maps.shape == (2, 160, 160) and 0 <= both.maps.min() and both.maps.max() <= 1
    assert both.maps.max() == pytest.approx(1, abs=1e-6) and both.empty == [False, False]
    exact = grad_cam(copy.deepcopy(model).double(), small.double(), both.targets).maps  # float64: the map itself
    assert (both.maps - exact).abs().max() <= MAP_ROUNDING  # the bound covers float32's actual rounding here
    for i in range(2):
        alone = grad_cam(model, small[i:i + 1], [both.targets[i]]).maps[0]
        assert (alone - exact[i]).abs().max() <= MAP_ROUNDING
        assert (alone - both.maps[i]).abs().max() <= MAP_ROUNDING
    other = grad_cam(model, small[:1], [777]).maps[0]
    assert (other - both.maps[0]).abs().max() > 0.1
    frozen = copy.deepcopy(model).train()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        again = grad_cam(frozen, small[:1], [3]).maps[0]
        assert not torch.is_grad_enabled()
    assert (again - both.maps[0]).abs().max() <= MAP_ROUNDING
    assert frozen.training and not frozen.Mixed_7c._forward_hooks
    shuffled = copy.deepcopy(model)
    torch.manual_seed(1)
    shuffled.Mixed_7c.apply(lambda m: m.reset_parameters() if isinstance(m, torch.nn.Conv2d) else None)
    shuffled.fc.reset_parameters()
    randomized = grad_cam(shuffled, small[:1], [3]).maps[0]
    assert (randomized - both.maps[0]).abs().mean() > 0.05


def test_a_layer_too_coarse_for_the_input_is_reported_with_an_earlier_layer_to_try(model, tmp_path):
    """On a 75-pixel input Mixed_7c is 1 x 1, so the map is flat (all zero after scaling): it used to be drawn as
    a heatmap without a word. Now the result says so and names earlier layers (and the picture is still drawn); one
    of them works."""
    from inceptionv3.visualize import save_explanation

    classifier = Classifier(model, backend="eager", device="cpu", crop_size=75)
    photo = str(photo_paths()[0])
    coarse = classifier.explain(photo)
    assert coarse.flat and coarse.layer_map.shape == (1, 1)
    assert "flat map" in coarse.describe() and "--layer" in coarse.describe()
    save_explanation(tmp_path / "coarse.png", np.asarray(Image.open(photo).convert("RGB")), coarse)
    finer = classifier.explain(photo, layer="Mixed_5d")
    assert not finer.flat and finer.finding is None and finer.heatmap.max() == pytest.approx(1, abs=1e-6)


def test_a_huge_photo_is_drawn_at_the_picture_size(model, tmp_path):
    """The heatmap was mapped onto the whole photo in float before being shrunk into a 400-pixel panel: a
    144-megapixel PNG took 8 GB. The photo is now scaled to the picture first."""
    import tracemalloc

    from inceptionv3.visualize import save_explanation

    classifier = Classifier(model, backend="eager", device="cpu")
    small = np.asarray(Image.open(photo_paths()[0]).convert("RGB"))
    e = classifier.explain(small)
    factor = 8000 / max(small.shape[:2])
    huge = np.asarray(Image.fromarray(small).resize((round(small.shape[1] * factor), round(small.shape[0] * factor))))
    e.crop_box = tuple(v * factor for v in e.crop_box)
    tracemalloc.start()
    save_explanation(tmp_path / "huge.png", huge, e)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000_000, f"{peak / 1e6:.0f} MB for a {huge.shape[1]} x {huge.shape[0]} photo"
    assert Image.open(tmp_path / "huge.png").width > 1200


def test_no_positive_evidence_is_reported_not_drawn(model, tmp_path):
    """A class whose fc row is zero gets a zero gradient: the map stays all zero, is flagged empty and said so,
    and the picture shows the plain crop with the finding in its caption."""
    from inceptionv3.visualize import save_explanation

    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.fc.weight[9] = 0
    classifier = Classifier(silent, backend="eager", device="cpu")
    photo = str(photo_paths()[0])
    result = classifier.explain(photo, target=9)
    assert result.empty and result.heatmap.max() == 0 and result.overlay is None
    assert "no positive evidence" in result.describe()
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    picture = np.asarray(Image.open(save_explanation(tmp_path / "e.png", rgb, result)))
    offset = 10 + (400 - 299) // 2  # the 299 crop centred in the first 400 x 400 panel, not resized
    assert np.array_equal(picture[offset:offset + 299, offset:offset + 299], result.crop)  # no overlay


def test_explain_api_names_targets_maps_back_and_reports_bad_inputs(trained_like_checkpoint, tmp_path):
    classifier = Classifier(trained_like_checkpoint, backend="eager", precision="bf16", device="cpu")
    photo = photo_paths()[0]
    by_name = classifier.explain(str(photo), target=classifier.class_names[5].split(",")[0])
    assert by_name.ok and by_name.target == 5 and by_name.heatmap.shape == (299, 299)
    assert by_name.topk[0][2] >= by_name.topk[1][2] and by_name.overlay.shape == (299, 299, 3)
    assert "eager fp32" in by_name.note  # bf16 autocast: explained in float32, and said so
    height, width = by_name.image_size
    left, top, right, bottom = by_name.crop_box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    on_photo = heatmap_on_photo(by_name.heatmap, by_name.crop_box, height, width)
    assert on_photo.shape == (height, width) and np.isnan(on_photo).any() == (right - left < width - 1)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = classifier.explain(str(tmp_path / "bad.jpg"))
    assert not bad.ok and "bad.jpg" not in (bad.error or "") and bad.heatmap is None
    with pytest.raises(InputError, match="--target 12345"):
        classifier.explain(str(photo), target=12345)
    with pytest.raises(InputError, match="--layer 'Mixed_9z'"):
        classifier.explain(str(photo), layer="Mixed_9z")


def test_source_box_locates_the_crop_in_the_photo():
    """torchvision's preset on a 600 x 400 photo: short edge 400 -> 342 makes 513 x 342, crop 299 at (107, 22)
    (offsets rounded half to even), scaled back by 600 / 513 and 400 / 342."""
    box = PRESETS["torchvision"].source_box(400, 600)
    expected = (107 * 600 / 513, 22 * 400 / 342, 406 * 600 / 513, 321 * 400 / 342)
    assert box == pytest.approx(expected, abs=1e-9)
    mask = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    assert np.abs(heatmap_on_photo(mask, (0, 0, 20, 20), 20, 20) - mask).max() <= 1e-6


def test_cli_explain_and_predict_cam_write_pictures_and_keep_going(trained_like_checkpoint, tmp_path, capsys):
    good = tmp_path / "in" / "photo.jpg"
    good.parent.mkdir()
    Image.open(photo_paths()[1]).convert("RGB").save(good)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "in"), "--weights", str(trained_like_checkpoint), "--out", str(out),
            "--device", "cpu"]
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "gradcam of" in printed.out and "error:" in printed.out and "1 ok, 1 failed" in printed.err
    picture = Image.open(out / "photo.png")
    assert picture.width > 1200  # crop overlay, photo overlay and the bars
    assert main([*args, "--format", "npy", "--method", "gradcam++", "--allow-failures", "--target", "3"]) == 0
    heatmap = np.load(out / "photo.npy")
    assert heatmap.shape == (299, 299) and heatmap.dtype == np.float32 and heatmap.max() <= 1
    assert main([*args, "--format", "npy", "--method", "gradcam++", "--allow-failures", "--target", "3",
                 "--eigen-smooth"]) == 0
    assert np.abs(np.load(out / "photo.npy") - heatmap).max() > 1e-3  # the option reaches the maps
    vis = tmp_path / "vis"
    assert main(["predict", str(good), "--weights", str(trained_like_checkpoint), "--backend", "eager",
                 "--save-vis", str(vis), "--cam", "layercam", "--device", "cpu"]) == 0
    assert Image.open(vis / "photo.png").width == picture.width
    many = tmp_path / "many"  # more classes than bars fit: the picture shows 10, every row keeps all 17
    assert main(["predict", str(good), "--weights", str(trained_like_checkpoint), "--backend", "eager", "--topk",
                 "17", "--save-vis", str(many), "--cam", "--output", str(tmp_path / "rows.jsonl")]) == 0
    assert len(json.loads((tmp_path / "rows.jsonl").read_text())["topk"]) == 17 and (many / "photo.png").is_file()
    assert main([*args, "--topk", "17", "--allow-failures"]) == 0 and (out / "photo.png").is_file()
    assert main(["predict", str(good), "--weights", str(trained_like_checkpoint), "--cam"]) == 2
    assert "--save-vis" in capsys.readouterr().err


def test_cli_explain_scores_each_map_against_a_random_one_and_runs_the_sanity_check(trained_like_checkpoint,
                                                                                    tmp_path, capsys):
    """--score writes each map's deletion, insertion and ROAD beside a random map's to explanations.csv and .jsonl
    (a broken input keeps its row), prints a summary, and --sanity writes sanity.csv. At crop 96, so it is cheap
    (at Mixed_6e: Mixed_7c is 1 x 1 there, a flat map, which is not scored)."""
    import csv

    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(photo_paths()[1]).convert("RGB").save(folder / "photo.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "out"
    assert main(["explain", str(folder), "--weights", str(trained_like_checkpoint), "--out", str(out), "--crop-size",
                 "96", "--layer", "Mixed_6e", "--score", "deletion,insertion,road", "--steps", "4", "--baseline",
                 "mean", "--sanity", "1", "--allow-failures", "--format", "npy"]) == 0
    printed = capsys.readouterr()
    rows = {row["input"]: row for row in csv.DictReader(open(out / "explanations.csv"))}
    lines = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 2
    broken = next(line for line in lines if line["input"].endswith("broken.png"))
    assert broken["error"] and "deletion" not in broken  # its row stays, with the reason
    good = next(line for line in lines if "error" not in line)
    for score in ("deletion", "insertion", "road"):
        assert 0 <= good[f"{score}_random"] <= 1 or score == "road"
        assert good[f"{score}_beats_random"] in (True, False)
    assert good["setting_baseline"] == "mean" and good["setting_steps"] == 4 and good["file"] == "photo.npy"
    assert "faithfulness over 1 images" in printed.err and "beats random on" in printed.err
    sanity = list(csv.DictReader(open(out / "sanity.csv")))
    assert [row["randomised_down_to"] for row in sanity][:2] == ["fc", "Mixed_7c"]
    assert all(-1 <= float(row["rank_correlation"]) <= 1 for row in sanity)
    assert main(["explain", str(folder / "photo.jpg"), "--weights", str(trained_like_checkpoint), "--score",
                 "deletion,saliency"]) == 2
    assert "--score takes deletion, insertion, road" in capsys.readouterr().err
    assert main(["explain", str(folder / "photo.jpg"), "--score", "deletion", "--steps", "0"]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err  # before any model is loaded
