"""Preprocessing presets: how each weights source resized, cropped and normalised its inputs.

A preset travels with its weights (``WeightsEntry.preprocess``), so that a model is never fed
inputs prepared for another source, the silent accuracy loss users hit most often.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
INCEPTION_MEAN = (127.5, 127.5, 127.5)
INCEPTION_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class Preprocess:
    """One evaluation pipeline. Mean and std are on the 0-255 scale, in RGB order.

    ``order='resize_crop'`` resizes the short edge to ``resize`` then centre-crops ``crop``;
    ``order='crop_resize'`` (TF-slim) centre-crops ``crop_fraction`` of the image, then resizes to ``crop``.
    """

    name: str
    resize: int
    crop: int
    interpolation: str
    backend: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    order: str = "resize_crop"
    crop_fraction: float = 0.875
    source_note: str = ""

    def describe(self) -> str:
        if self.order == "crop_resize":
            steps = f"centre crop {self.crop_fraction:g} -> {self.interpolation} resize to {self.crop}"
        else:
            steps = f"{self.interpolation} short-edge resize to {self.resize} -> centre crop {self.crop}"
        return f"{self.name}: {steps} ({self.backend}), mean {list(self.mean)}, std {list(self.std)}, RGB"


PRESETS: dict[str, Preprocess] = {
    p.name: p
    for p in (
        Preprocess(
            "mmpretrain", 342, 299, "bilinear", "cv2", IMAGENET_MEAN, IMAGENET_STD,
            source_note="mmpretrain inception-v3_8xb32_in1k test_pipeline: ResizeEdge(342, short), CenterCrop(299)",
        ),
        Preprocess(
            "torchvision", 342, 299, "bilinear", "pil", IMAGENET_MEAN, IMAGENET_STD,
            source_note="torchvision Inception_V3_Weights.IMAGENET1K_V1: ImageClassification(crop 299, resize 342)",
        ),
        Preprocess(
            # timm resolves crop_pct 0.875 at 299 to a short edge of floor(299 / 0.875) = 341.
            "timm-inception", 341, 299, "bicubic", "pil", INCEPTION_MEAN, INCEPTION_STD,
            source_note="timm inception_v3 pretrained cfg: crop_pct 0.875, bicubic, mean/std 0.5",
        ),
        Preprocess(
            "timm-imagenet", 341, 299, "bicubic", "pil", IMAGENET_MEAN, IMAGENET_STD,
            source_note="timm inception_v3.gluon_in1k: crop_pct 0.875, bicubic, ImageNet mean/std",
        ),
        Preprocess(
            "keras", 299, 299, "bilinear", "pil", INCEPTION_MEAN, INCEPTION_STD, order="crop_resize",
            source_note="keras.applications.inception_v3.preprocess_input (mode 'tf': x / 127.5 - 1); "
            "crop as in the TF-slim evaluation the weights come from",
        ),
        Preprocess(
            "tf-slim", 299, 299, "bilinear", "pil", INCEPTION_MEAN, INCEPTION_STD, order="crop_resize",
            source_note="TF-slim inception_preprocessing (eval): central_crop(0.875), bilinear resize, [-1, 1]",
        ),
    )
}
