"""Faithfulness scores and the sanity check: ROAD held to grad-cam's own classes, deletion and insertion to a loop
written here, and a model whose evidence is known (a head fitted in the test so that a pasted patch decides the
class), whose map must find the patch and beat a random map."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import photo_paths
from PIL import Image

from inceptionv3 import get_model
from inceptionv3.explain import grad_cam
from inceptionv3.faithfulness import area, impute, road, target_probability
from inceptionv3.inference import Classifier


@pytest.fixture(scope="module")
def model(trained_like_checkpoint):
    return get_model(trained_like_checkpoint).eval()


@pytest.fixture(scope="module")
def small(model):
    """Two real photos at 96 x 96 through the model's preprocessing (ROAD solves one sparse system per step)."""
    preprocess = model.weights_info.preprocess.with_crop(96)
    return preprocess.batch([str(p) for p in photo_paths()[:2]])


def test_noisy_linear_imputation_is_grad_cams_to_the_bit(small):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    cam = np.random.default_rng(1).random((96, 96), dtype=np.float32)
    for percentile in (10, 80):
        keep = np.float32(cam < np.percentile(cam, percentile))
        torch.manual_seed(5)
        expected = NoisyLinearImputer()(small[0], torch.from_numpy(keep))
        ours = impute(small[0], keep, generator=torch.Generator().manual_seed(5))
        assert torch.equal(ours, expected)
        assert torch.equal(ours[:, keep == 1], small[0][:, keep == 1])  # kept pixels untouched


def test_road_matches_grad_cams_road_classes(model, small):
    """ROADCombined (LeRF then MoRF at 10 ... 90) and ROADMostRelevantFirst at 80, with the softmax target, on a
    real map; the generator seeded as grad-cam's global one draws the same noise."""
    from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    with torch.no_grad():
        top = int(model(small[:1]).argmax())  # the top-1 class, whose probability imputation can move
    cam = grad_cam(model, small[:1], [top]).maps[0].numpy()
    torch.manual_seed(7)
    expected = ROADCombined()(small[:1], cam[None], [ClassifierOutputSoftmaxTarget(top)], model)[0]
    ours = road(target_probability(model, top), small[0], cam, generator=torch.Generator().manual_seed(7))
    assert ours["road"] == pytest.approx(float(expected), abs=1e-6) and ours["morf"] != 0
    torch.manual_seed(3)  # one percentile each, LeRF first as ours draws its noise
    targets = [ClassifierOutputSoftmaxTarget(top)]
    lerf80 = ROADLeastRelevantFirst(80)(small[:1], cam[None], targets, model)[0]
    morf80 = ROADMostRelevantFirst(80)(small[:1], cam[None], targets, model)[0]
    ours80 = road(target_probability(model, top), small[0], cam, percentiles=[80],
                  generator=torch.Generator().manual_seed(3))
    assert ours80["lerf"] == pytest.approx(float(lerf80), abs=1e-6)
    assert ours80["morf"] == pytest.approx(float(morf80), abs=1e-6)


def _deletion_by_hand(model, preprocess, crop, heatmap, target, steps):
    """Deletion with black pixels, one image at a time: the plain loop the batched code must agree with."""
    order = np.argsort(-heatmap.ravel(), kind="stable")
    probabilities = []
    for k in range(steps + 1):
        image = crop.astype(np.float32).reshape(-1, 3).copy()
        image[order[:round(k * order.size / steps)]] = 0
        with torch.no_grad():
            logits = model(preprocess.normalize(image.reshape(1, *crop.shape)))
        probabilities.append(float(torch.softmax(logits, dim=1)[0, target]))
    return np.trapezoid(probabilities, dx=1 / steps)


def _with_patch(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo with a magenta checkerboard (a quarter of its short side) pasted inside the centre crop's top-left
    quarter, and the patch's mask."""
    height, width = photo.shape[:2]
    side = min(height, width) // 4
    top, left = int(height * 0.5 - side * 1.2), int(width * 0.5 - side * 1.2)
    checker = (np.indices((side, side)).sum(axis=0) // max(side // 8, 1) % 2)[..., None] * np.array([255, 0, 255])
    patched, mask = photo.copy(), np.zeros(photo.shape, np.uint8)
    patched[top:top + side, left:left + side] = checker
    mask[top:top + side, left:left + side] = 255
    return patched, mask


@pytest.fixture(scope="module")
def patch_model(model):
    """The trained-like network with a two-class head fitted here on pooled features of photos with and without a
    pasted checkerboard: the patch is the only evidence for class 1."""
    classifier = Classifier(copy.deepcopy(model), backend="eager", device="cpu", crop_size=224)
    photos = [classifier.load_photo(str(p), p.name) for p in photo_paths()[:8]]
    patched = [_with_patch(photo) for photo in photos]
    crop = classifier.preprocess.crop_image
    crops = np.stack([crop(p) for p in photos] + [crop(p) for p, _ in patched])
    net = classifier.model
    with torch.no_grad():
        features = net.forward_head(net.forward_features(classifier.preprocess.normalize(crops)), pre_logits=True)
    labels = torch.tensor([0] * 8 + [1] * 8)
    net.reset_classifier(2)
    mean, std = features.mean(0), features.std(0) + 1e-6
    optimizer = torch.optim.Adam(net.fc.parameters(), lr=0.05)
    for _ in range(200):  # logistic regression on standardised features, folded into fc afterwards
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net.fc((features - mean) / std), labels).backward()
        optimizer.step()
    with torch.no_grad():
        net.fc.weight /= std
        net.fc.bias -= (net.fc.weight * mean).sum(1)
    classifier = Classifier(net, backend="eager", device="cpu", crop_size=224, class_names=["plain", "patched"])
    photo, mask = patched[0]
    return classifier, Image.fromarray(photo), crop(mask)[..., 0] > 127


def test_a_map_of_known_evidence_finds_it_and_beats_random_and_deletion_matches_a_plain_loop(patch_model):
    classifier, photo, inside = patch_model
    explained = classifier.explain(photo, target=1, layer="Mixed_6e")  # 12 x 12 here: fine enough to locate
    assert explained.target_score > 0.9 and 0.02 < inside.mean() < 0.3
    assert explained.heatmap[inside].mean() > 1.5 * explained.heatmap[~inside].mean()  # 0.82 against 0.40
    peak = np.array(np.unravel_index(explained.heatmap.argmax(), inside.shape))
    box = np.argwhere(inside)
    assert (box.min(0) - 20 <= peak).all() and (peak <= box.max(0) + 20).all()  # within one cell of the layer
    result = classifier.faithfulness(explained, ("deletion", "insertion"), baseline="zeros", steps=5)
    assert result.beats_random("deletion") and result.scores["deletion"] < result.random["deletion"] - 0.1
    assert result.settings == {"target": 1, "random_seed": 0, "baseline": "zeros", "steps": 5}
    by_hand = _deletion_by_hand(classifier.model, classifier.preprocess, explained.crop, explained.heatmap, 1, 5)
    assert result.scores["deletion"] == pytest.approx(by_hand, abs=1e-5)
    assert area(np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)


def test_sanity_randomises_a_copy_and_the_map_stops_tracking_the_original(patch_model):
    classifier, photo, _ = patch_model
    before = {k: v.clone() for k, v in classifier.model.state_dict().items()}
    steps = classifier.sanity(photo, 1, steps=3)
    assert [name for name, _ in steps] == ["fc", "Mixed_7c", "Mixed_7b"]
    assert all(-1 <= rho <= 1 for _, rho in steps) and steps[-1][1] < 0.8
    assert all(torch.equal(v, before[k]) for k, v in classifier.model.state_dict().items())


def test_a_cam_that_fails_midway_leaves_no_hook_grad_or_mode_behind(model, small):
    trained = copy.deepcopy(model).train()

    def interrupt(_passes: int) -> None:
        raise KeyboardInterrupt

    for method in ("scorecam", "ablationcam"):
        with pytest.raises(KeyboardInterrupt):
            grad_cam(trained, small[:1], [3], layer="Conv2d_2b_3x3", method=method, progress=interrupt)
        assert trained.training and torch.is_grad_enabled()  # the caller's mode, as it was
        assert all(not m._forward_hooks for m in trained.modules())
        assert all(p.grad is None for p in trained.parameters())


def test_morf_counts_a_deeper_drop_as_better_and_a_fully_tied_map_imputes_without_nan(small):
    from inceptionv3.faithfulness import Faithfulness

    result = Faithfulness({"morf": -0.3, "road": 0.2}, {"morf": -0.1, "road": 0.05})
    assert result.beats_random("morf") and result.beats_random("road")
    assert result.row()["morf_beats_random"] is True
    flat = np.zeros((96, 96), np.float32)  # every pixel tied: grad-cam's rule imputes them all
    imputed = impute(small[0], np.float32(flat < np.percentile(flat, 10)), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(imputed).all() and imputed.abs().max() < 0.1  # noise around the mean, not NaN


def test_a_layer_whose_next_operation_works_in_place_can_be_explained(model, small):
    """BasicConv2d applies its ReLU in place to its BatchNorm's output: the map of a .bn layer used to fail (a leaf
    that requires grad modified in place) or, without gradients, to read the activations after the ReLU. grad-cam
    reads them after the ReLU on a CPU (its ``.cpu().detach()`` shares the storage the ReLU then overwrites; on a
    GPU it copies), so its .bn map is ours at the block's output, and ours at .bn is the BatchNorm's own."""
    import pytorch_grad_cam as reference
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = "Mixed_5b.branch1x1.bn"
    assert torch.isfinite(grad_cam(model, small[:1], [3], layer=layer).maps).all()
    ours = grad_cam(model, small[:1], [3], layer=layer, method="eigencam").maps.numpy()
    reference_model = copy.deepcopy(model)
    with reference.EigenCAM(model=reference_model, target_layers=[reference_model.get_submodule(layer)]) as cam:
        expected = cam(small[:1], [ClassifierOutputTarget(3)])
    after_relu = grad_cam(model, small[:1], [3], layer="Mixed_5b.branch1x1", method="eigencam").maps.numpy()
    assert np.abs(after_relu - expected).max() <= 1e-5 and np.abs(ours - expected).max() > 0.05
