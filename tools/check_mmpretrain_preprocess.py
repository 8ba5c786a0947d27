"""One-off check that the ``mmpretrain`` preset is bit-identical to mmpretrain's own inference pipeline,
that ``inference_model`` returns what ``mmpretrain.apis.inference_model`` returns on the same checkpoint,
and a print-out of the resize sizes and crop offsets, which ``tests/test_preprocess.py`` pins as facts.

mmpretrain is never a dependency. Run it in the throwaway venv described in ``check_mmpretrain_layout.py``:
    PYTHONPATH=src python tools/check_mmpretrain_preprocess.py ../shared/data/images
"""

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from mmpretrain.apis import ImageClassificationInferencer

from inceptionv3 import InceptionV3, inference_model
from inceptionv3.preprocess import MAX_ASPECT, PRESETS

SHAPES = [(300, 300), (299, 500), (500, 299), (343, 1000), (1000, 343), (75, 100), (2000, 75), (481, 641),
          (600, 800), (341, 512), (929, 512), (1, 1), (5, 3000), (343, 512), (418, 512), (600, 512), (384, 512),
          (300, 451), (400, 600)]


def locate(crop: np.ndarray, resized: np.ndarray) -> list[tuple[int, int]]:
    """Every offset near the centre where the crop matches (a flat image matches at several)."""
    h, w = crop.shape[:2]
    hits = [(y, x) for y in range(resized.shape[0] - h + 1) for x in range(resized.shape[1] - w + 1)
            if abs(y - (resized.shape[0] - h) / 2) <= 1 and abs(x - (resized.shape[1] - w) / 2) <= 1
            and np.array_equal(resized[y:y + h, x:x + w], crop)]
    return hits


def main(image_dir: str) -> None:
    inferencer = ImageClassificationInferencer("inception-v3_3rdparty_8xb32_in1k", pretrained=False)
    resize_edge, center_crop = inferencer.pipeline.transforms[0], inferencer.pipeline.transforms[1]
    preset = PRESETS["mmpretrain"]

    def reference_tensor(item):
        data = next(inferencer.preprocess([item], batch_size=1))
        return inferencer.model.data_preprocessor(data, False)["inputs"]

    photos = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    worst = 0.0
    for path in photos:
        ours = preset.normalize(preset.load(path)[None])
        diff = (reference_tensor(str(path)) - ours).abs().max().item()
        worst = max(worst, diff)
    print(f"{len(photos)} photos by path: max |reference - ours| = {worst}")

    base = cv2.imread(str(photos[0]))
    for height, width in SHAPES:
        bgr = cv2.resize(base, (width, height), interpolation=cv2.INTER_AREA)
        results = resize_edge({"img": bgr.copy(), "img_shape": bgr.shape[:2], "ori_shape": bgr.shape[:2]})
        resized = results["img"]
        crop = center_crop(dict(results))["img"]
        offsets = locate(crop, resized)
        ours_hw = preset.resized_size(height, width)
        ours_box = preset.crop_box(*ours_hw)
        diff = (reference_tensor(bgr) - preset.normalize(preset.load(bgr)[None])).abs().max().item()
        print(f"({height}, {width}): resized {resized.shape[:2]} crop top/left {offsets} size {crop.shape[:2]}"
              f" | ours {ours_hw} {ours_box} | tensor diff {diff}")
        assert ours_hw == resized.shape[:2] and ours_box[:2] in offsets and ours_box[2:] == crop.shape[:2]
        # Past MAX_ASPECT only the centre strip is resized: within a grey level, not bit-exact.
        assert diff == 0.0 if max(height, width) <= MAX_ASPECT * min(height, width) else diff < 2 / 57


def check_inference(image_dir: str) -> None:
    torch.manual_seed(0)
    photos = sorted(str(p) for p in Path(image_dir).iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    # Realistic activations: BN statistics measured on the photos themselves, and a head with a spread.
    model = InceptionV3().train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    preset = PRESETS["mmpretrain"]
    model(preset.normalize(np.stack([preset.load(p) for p in photos])))
    model.eval()
    model.fc.weight.data *= 20
    path = Path(tempfile.mkdtemp()) / "mmpretrain_layout.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    reference = ImageClassificationInferencer("inception-v3_3rdparty_8xb32_in1k", pretrained=str(path))
    expected = reference(photos, batch_size=4)
    ours = inference_model(path, photos, batch_size=4)
    assert all(set(e) == set(o) and e["pred_class"] == o["pred_class"] for e, o in zip(expected, ours, strict=True))
    assert [e["pred_label"] for e in expected] == [o["pred_label"] for o in ours]
    worst = max(np.abs(e["pred_scores"] - o["pred_scores"]).max() for e, o in zip(expected, ours, strict=True))
    spread = [round(o["pred_score"], 4) for o in ours[:5]]
    print(f"inference_model on {len(photos)} photos: same keys, classes and labels; max |dscore| {worst:.2e}; "
          f"top scores {spread}, labels {[o['pred_label'] for o in ours[:5]]}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1])
    check_inference(sys.argv[1])
