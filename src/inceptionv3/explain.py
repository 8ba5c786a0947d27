"""Class activation maps (Grad-CAM and its family): which parts of the crop raised a class's logit.

The arithmetic is the grad-cam package's (``pytorch_grad_cam`` 1.5.7), step for step, so that maps agree with it
to float rounding:

1. the layer map: the channels weighted by the spatial mean of the logit's gradient (Grad-CAM), by Chattopadhay
   et al.'s alpha-weighted positive gradients (Grad-CAM++, eps 1e-6) or by the activation-weighted gradient
   (XGrad-CAM, eps 1e-7) and summed; or gradient times activation summed over channels at each position
   (HiResCAM; LayerCAM with the positive gradients only); or the projection on the first principal component of
   the positions' channel vectors (EigenCAM, no gradient); or, without gradients, channel weights from running the
   network once per channel (Score-CAM: the input masked by the channel's upsampled, min-max scaled map, the
   target logits softmaxed over channels; Ablation-CAM: the relative drop of the target logit when the channel is
   zeroed);
2. ReLU;
3. min-max scaling, ``(m - min) / (1e-7 + max)``;
4. a bilinear (half-pixel) resize to the input size;
5. min-max scaling again.

Gradients come from ``torch.autograd.grad`` with respect to the target layer's output only. The forward runs
without autograd up to the layer; there a hook hands the rest of the network a detached copy that requires grad
and turns recording on. So the graph covers the head alone (an explanation costs about one forward pass and
memory stays that of inference), frozen parameters work, and no parameter's ``.grad`` is touched. The hook is
removed, and the model's train/eval mode and the caller's grad mode restored, in ``finally``.

Score-CAM and Ablation-CAM run the network K times for a layer of K channels (2048 at Mixed_7c), in batches, one
batch in memory at a time. Ablation-CAM at a block of the network (``Mixed_7c``) reruns only what follows it
(``InceptionV3.forward_from``), so it costs K passes of the head, not of the whole network as in grad-cam.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

DEFAULT_LAYER = "Mixed_7c"
METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam")
"""Each as grad-cam 1.5.7's class of that name computes it (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM,
EigenCAM, ScoreCAM, AblationCAM)."""
GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")
PER_CHANNEL_METHODS = ("scorecam", "ablationcam")
"""Methods that run the network once per channel of the layer, so their cost grows with its width."""
BATCH_SIZES = {"scorecam": 16, "ablationcam": 32}  # grad-cam's defaults: the same batches give the same rounding
_SCORECAM_EPS = 1e-8  # grad-cam's ScoreCAM
_ABLATION_OFFSET = 1e7  # grad-cam's AblationLayer, for a layer whose output can be negative
_XGRAD_EPS = 1e-7  # grad-cam's XGradCAM
_SCALE_EPS = 1e-7  # grad-cam's scale_cam_image
_PLUSPLUS_EPS = 1e-6  # grad-cam's GradCAMPlusPlus


@dataclass
class CamMaps:
    """One batch's maps. ``maps``: N x H x W in [0, 1] over the input; ``layer_maps``: N x h x w at the layer's
    resolution, after the ReLU and before any scaling (all zero where no channel raised the target)."""

    maps: torch.Tensor
    layer_maps: torch.Tensor
    targets: list[int]
    logits: torch.Tensor
    empty: list[bool] = field(default_factory=list)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not name or name not in modules:
        blocks = ", ".join(n for n, _ in model.named_children())
        raise InputError(f"--layer {name!r}: no such module in the model (its blocks: {blocks}; nested modules "
                         "by dotted name, e.g. Mixed_7c.branch_pool)")
    return modules[name]


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """grad-cam's min-max per map: subtract the minimum, divide by 1e-7 plus the new maximum."""
    shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
    return shifted / (_SCALE_EPS + shifted.amax(dim=(1, 2), keepdim=True))


def channel_weights(activations: torch.Tensor, gradients: torch.Tensor, method: str) -> torch.Tensor:
    """N x C weights of the layer's channels (Grad-CAM, Grad-CAM++ and XGrad-CAM)."""
    if method == "gradcam":
        return gradients.mean(dim=(2, 3))
    if method == "xgradcam":  # each position's gradient weighted by its share of the channel's activation
        total = activations.sum(dim=(2, 3), keepdim=True)
        return (gradients * activations / (total + _XGRAD_EPS)).sum(dim=(2, 3))
    squared = gradients ** 2
    cubed = squared * gradients
    total = activations.sum(dim=(2, 3), keepdim=True)
    alpha = squared / (2 * squared + total * cubed + _PLUSPLUS_EPS)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    return (gradients.clamp_min(0) * alpha).sum(dim=(2, 3))


def layer_maps(activations: torch.Tensor, gradients: torch.Tensor | None, method: str,
               eigen_smooth: bool = False) -> torch.Tensor:
    """N x h x w maps at the layer, before the ReLU: channel-weighted sums (gradcam, gradcam++, xgradcam), the
    elementwise gradient-times-activation sum (hirescam; layercam keeps the positive gradients only), or the
    projection on the first principal component of the h*w positions' channel vectors (eigencam).
    ``eigen_smooth``: grad-cam's option, the first principal component of the weighted channels instead of their
    sum (EigenCAM is that already)."""
    if method == "eigencam":
        return torch.from_numpy(_first_component(activations.numpy()))
    if method == "hirescam":
        weighted = gradients * activations
    elif method == "layercam":
        weighted = gradients.clamp_min(0) * activations
    else:
        weighted = channel_weights(activations, gradients, method)[:, :, None, None] * activations
    return torch.from_numpy(_first_component(weighted.numpy())) if eigen_smooth else weighted.sum(dim=1)


def _first_component(activations: np.ndarray) -> np.ndarray:
    """grad-cam's 2-D projection: per image, the h*w x C matrix centred by column, projected on its first right
    singular vector (numpy's SVD, whose sign grad-cam keeps as it comes)."""
    out = []
    for image in np.nan_to_num(activations, nan=0.0):
        positions = image.reshape(image.shape[0], -1).T
        positions = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(positions, full_matrices=False)  # grad-cam asks for all of V; the first row is
        # the same (200 random cases here), at a fourteenth of the cost
        out.append((positions @ vt[0]).reshape(image.shape[1:]))
    return np.float32(out)


def scaled_maps(raw: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-5 from N x h x w layer maps: (maps N x H x W in [0, 1] at ``size``, the layer maps after the ReLU,
    unscaled)."""
    raw = raw.clamp_min(0)
    maps = F.interpolate(_scale(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _scale(maps.clamp_min(0)), raw


def weighted_maps(activations: torch.Tensor, weights: torch.Tensor,
                  size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scaled_maps` of N x C x h x w activations weighted by N x C channel weights: anything that weights
    a layer's channels (a logit's gradient, FID's) draws its map here."""
    return scaled_maps((weights[:, :, None, None] * activations).sum(dim=1), size)


AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))
"""grad-cam's ``aug_smooth``: its default test-time augmentations (ttach's horizontal flip, then the input times
0.9, 1 and 1.1), each map flipped back and the six averaged."""


def grad_cam(model: nn.Module, x: torch.Tensor, targets: list[int] | None = None, *, layer: str = DEFAULT_LAYER,
             method: str = "gradcam", aug_smooth: bool = False, eigen_smooth: bool = False,
             batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> CamMaps:
    """Maps for a normalised N x 3 x H x W batch; ``targets`` are class indices (default: each image's top-1).
    Each image's map depends on that image alone (the model runs in eval mode). ``aug_smooth`` and
    ``eigen_smooth`` are grad-cam's options of those names: six passes averaged (each with its own top-1 when no
    target is given, as grad-cam does), and principal components instead of channel sums. ``batch_size`` (Score-CAM
    and Ablation-CAM: the per-channel passes run together; grad-cam's 16 and 32 by default) bounds their memory, and
    ``progress`` is called with the number of passes done after each batch."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if not aug_smooth:
        return _one_cam(model, x, targets, layer, method, eigen_smooth, batch_size, progress)
    runs = []
    for flip, factor in AUGMENTATIONS:
        augmented = (torch.flip(x, dims=[3]) if flip else x) * factor
        cam = _one_cam(model, augmented, targets, layer, method, eigen_smooth, batch_size, progress)
        if flip:
            cam.maps, cam.layer_maps = torch.flip(cam.maps, dims=[2]), torch.flip(cam.layer_maps, dims=[2])
        runs.append(cam)
    plain = runs[AUGMENTATIONS.index((False, 1.0))]  # targets and logits: the image as given
    maps = torch.stack([cam.maps for cam in runs]).mean(dim=0)
    layer_mean = torch.stack([cam.layer_maps for cam in runs]).mean(dim=0)
    return CamMaps(maps, layer_mean, plain.targets, plain.logits, [bool(m.max() <= 0) for m in layer_mean])


def _one_cam(model: nn.Module, x: torch.Tensor, targets: list[int] | None, layer: str, method: str,
             eigen_smooth: bool, batch_size: int | None = None,
             progress: Callable[[int], None] | None = None) -> CamMaps:
    module = find_layer(model, layer)
    captured: list[torch.Tensor | None] = []
    needs_grad = method in GRADIENT_METHODS

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            captured.append(None)
            return None
        leaf = output.detach()
        if needs_grad:
            torch.set_grad_enabled(True)  # record the graph from here on only: the layers before need none
            leaf.requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # the next layer may work in place (BasicConv2d's ReLU after a .bn layer)

    was_training = model.training
    handle = module.register_forward_hook(hook)
    try:
        model.eval()
        with torch.inference_mode(False), torch.no_grad():  # no_grad's exit restores the caller's grad mode
            logits = model(x.clone() if x.is_inference() else x)
            handle.remove()
            if not captured or captured[-1] is None:
                raise InputError(f"--layer {layer!r} does not output an N x C x h x w feature map")
            activations = captured[-1]
            n, classes = logits.shape
            if targets is None:
                targets = logits.argmax(dim=1).tolist()
            if len(targets) != n or any(not 0 <= int(t) < classes for t in targets):
                raise InputError(f"targets must be {n} class indices in [0, {classes}), got {targets}")
            targets = [int(t) for t in targets]
            chosen = logits[torch.arange(n), torch.as_tensor(targets, dtype=torch.long, device=logits.device)]
            gradients = torch.autograd.grad(chosen.sum(), activations)[0] if needs_grad else None
            torch.set_grad_enabled(False)
            activations, logits = activations.detach(), logits.detach()
            weights = None
            if method == "scorecam":
                weights = _score_weights(model, x, activations, targets, batch_size or BATCH_SIZES[method], progress)
            elif method == "ablationcam":
                weights = _ablation_weights(model, x, layer, module, activations, chosen.detach(), targets,
                                            batch_size or BATCH_SIZES[method], progress)
    finally:
        handle.remove()
        model.train(was_training)
    activations, logits = activations.float().cpu(), logits.float()
    if weights is not None:
        weighted = weights[:, :, None, None] * activations
        raw = torch.from_numpy(_first_component(weighted.numpy())) if eigen_smooth else weighted.sum(dim=1)
    else:
        raw = layer_maps(activations, None if gradients is None else gradients.float().cpu(), method, eigen_smooth)
    maps, positive = scaled_maps(raw, tuple(x.shape[-2:]))
    empty = [bool(m.max() <= 0) for m in positive]
    return CamMaps(maps, positive, targets, logits.cpu(), empty)


def _score_weights(model: nn.Module, x: torch.Tensor, activations: torch.Tensor, targets: list[int],
                   batch_size: int, progress: Callable[[int], None] | None) -> torch.Tensor:
    """Score-CAM's N x K weights: each channel's map, upsampled (bilinear, corners aligned) and min-max scaled
    (eps 1e-8), masks the input; the target's logits over the K masked inputs are softmaxed. Upsampled one batch
    of channels at a time, so memory holds one batch of masked inputs, not N x K of them."""
    n, k = activations.shape[:2]
    scores = torch.empty(n, k)
    for i in range(n):
        for start in range(0, k, batch_size):
            up = F.interpolate(activations[i:i + 1, start:start + batch_size], size=tuple(x.shape[-2:]),
                               mode="bilinear", align_corners=True)[0]
            low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
            masked = x[i][None] * ((up - low) / (high - low + _SCORECAM_EPS))[:, None]
            scores[i, start:start + len(up)] = model(masked)[:, targets[i]].float().cpu()
            if progress:
                progress(len(up))
    return torch.softmax(scores, dim=-1)


def _ablation_weights(model: nn.Module, x: torch.Tensor, layer: str, module: nn.Module, activations: torch.Tensor,
                      original: torch.Tensor, targets: list[int], batch_size: int,
                      progress: Callable[[int], None] | None) -> torch.Tensor:
    """Ablation-CAM's N x K weights, ``(original - ablated) / original`` of the target logit, each channel in turn
    set to 0 (to the layer's minimum less 1e7 where the output can be negative). A block of ``feature_stages``
    reruns only what follows it; a module inside a block reruns the network with the module's output replaced."""
    n, k = activations.shape[:2]
    stages = model.feature_stages() if hasattr(model, "feature_stages") else []
    ablated = torch.empty(n, k)
    for i in range(n):
        cached = activations[i:i + 1]
        low = float(cached.min())
        value = 0.0 if low == 0 else low - _ABLATION_OFFSET
        for start in range(0, k, batch_size):
            count = min(batch_size, k - start)
            batch = cached.repeat(count, 1, 1, 1)
            batch[torch.arange(count), torch.arange(start, start + count)] = value
            if layer in stages:
                logits = model.forward_from(layer, batch)
            else:
                handle = module.register_forward_hook(lambda _m, _i, _o, batch=batch: batch)
                try:
                    logits = model(x[i][None].repeat(count, 1, 1, 1))
                finally:
                    handle.remove()
            ablated[i, start:start + count] = logits[:, targets[i]].float().cpu()
            if progress:
                progress(count)
    original = original.float().cpu()[:, None]
    return (original - ablated) / original


def channel_count(model: nn.Module, layer: str) -> int:
    """How many channels ``layer`` outputs (how many passes Score-CAM and Ablation-CAM make there), from one pass
    on a 75-pixel input (the smallest the network takes: a few milliseconds)."""
    module = find_layer(model, layer)
    seen: list[int] = []
    handle = module.register_forward_hook(
        lambda _m, _i, out: seen.append(int(out.shape[1])) if torch.is_tensor(out) and out.ndim == 4 else None)
    was_training = model.training
    try:
        parameter = next(model.parameters(), None)
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 75, 75, device=parameter.device if parameter is not None else "cpu"))
    finally:
        handle.remove()
        model.train(was_training)
    if not seen:
        raise InputError(f"--layer {layer!r} does not output an N x C x h x w feature map")
    return seen[-1]


def forward_passes(model: nn.Module, method: str, layer: str = DEFAULT_LAYER, aug_smooth: bool = False) -> int:
    """Passes of the network (or of what follows the layer, for Ablation-CAM at a block) one explanation costs:
    1 for the gradient methods and EigenCAM, 1 + the layer's channels for Score-CAM and Ablation-CAM; x6 with
    ``aug_smooth``. Servers bound explanations by it."""
    per_image = 1 + (channel_count(model, layer) if method in PER_CHANNEL_METHODS else 0)
    return per_image * (len(AUGMENTATIONS) if aug_smooth else 1)


@dataclass
class Explanation:
    """One input's explanation, ``Prediction``-like: on failure ``error`` holds the reason and the rest is None.

    ``heatmap`` is crop-sized, in [0, 1]; ``crop`` the uint8 RGB crop the model saw and ``overlay`` the heatmap
    blended on it; ``crop_box`` (left, top, right, bottom) locates the crop in the photo (``image_size`` is the
    photo's height and width), so :func:`heatmap_on_photo` maps the heatmap back. ``empty`` means no channel
    raised the target's logit: the map is all zero, not a finding of "everywhere equally"."""

    index: int
    name: str
    heatmap: np.ndarray | None = None
    layer_map: np.ndarray | None = None
    target: int | None = None
    target_name: str | None = None
    target_score: float | None = None
    topk: list[tuple[int, str | None, float]] = field(default_factory=list)
    crop: np.ndarray | None = None
    overlay: np.ndarray | None = None
    crop_box: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None
    empty: bool = False
    method: str = "gradcam"
    layer: str = DEFAULT_LAYER
    note: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def flat(self) -> bool:
        """The layer's map has no spatial variation (``Mixed_7c`` is 1 x 1 on a 75-pixel input): the heatmap is
        all zero and says nothing about where the evidence is."""
        return (self.layer_map is not None and not self.empty
                and float(self.layer_map.max()) == float(self.layer_map.min()))

    @property
    def finding(self) -> str | None:
        """Why the heatmap shows nothing, when it does not; ``None`` for an ordinary map."""
        if self.empty:
            return "no positive evidence (all-zero map)"
        if self.flat:
            h, w = self.layer_map.shape
            return (f"flat map: {self.layer} is {h} x {w} at this input size, too coarse to show where; try an "
                    "earlier --layer, e.g. Mixed_6e or Mixed_5d")
        return None

    def describe(self) -> str:
        """One line: what was explained, and the finding."""
        if self.error is not None:
            return f"error: {self.error}"
        name = f"{self.target_name} ({self.target})" if self.target_name else f"class {self.target}"
        what = f"{self.method} of {name}, score {self.target_score:.4f}, at {self.layer}"
        return f"{what}: {self.finding}" if self.finding else what


def resolve_target(target: int | str | None, class_names: tuple[str, ...] | None, num_classes: int) -> int | None:
    """None (top-1), a class index, or a class name matched as class folders are (any synonym, wnid, case)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in ("", "top1")):
        return None
    if isinstance(target, str) and re.fullmatch(r"-?[0-9]+", target.strip()):  # ASCII digits: "¹".isdigit() too
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise InputError(f"--target {target!r}: give a class index or a class name")
    if isinstance(target, int):
        if not 0 <= target < num_classes:
            raise InputError(f"--target {target}: the model has classes 0 to {num_classes - 1}")
        return target
    if not class_names:
        raise InputError(f"--target {target!r}: the model has no class names; give a class index")
    from .data import match_classes
    from .imagenet import imagenet_wnids

    wnids = imagenet_wnids() if len(class_names) == 1000 else None
    (index,), reasons = match_classes([target], class_names, wnids)
    if index is None:
        raise InputError(f"--target {target!r}: {reasons[0] if reasons else 'no class of that name'}")
    return index


# -- pictures ---------------------------------------------------------------------------------------------------


def jet(mask: np.ndarray) -> np.ndarray:
    """H x W in [0, 1] -> H x W x 3 uint8 RGB through OpenCV's JET colour map, as grad-cam colours its maps."""
    import cv2

    return cv2.applyColorMap(np.uint8(255 * np.clip(mask, 0, 1)), cv2.COLORMAP_JET)[:, :, ::-1].copy()


def overlay(rgb: np.ndarray, mask: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """grad-cam's ``show_cam_on_image(rgb / 255, mask, use_rgb=True)``: the JET heatmap and the image blended
    half and half, rescaled so that the brightest value is 1, as uint8."""
    blended = (1 - image_weight) * (np.float32(jet(mask)) / 255) + image_weight * (np.float32(rgb) / 255)
    return np.uint8(255 * blended / np.max(blended))


def heatmap_on_photo(mask: np.ndarray, box: tuple[float, float, float, float], height: int,
                     width: int) -> np.ndarray:
    """The crop's heatmap mapped back onto the whole height x width photo through the crop box (left, top,
    right, bottom in photo pixels), bilinearly; NaN outside the box, which the model never saw."""
    left, top, right, bottom = box
    ys = (np.arange(height) + 0.5 - top) * mask.shape[0] / (bottom - top) - 0.5
    xs = (np.arange(width) + 0.5 - left) * mask.shape[1] / (right - left) - 0.5
    inside_y = (np.arange(height) + 0.5 >= top) & (np.arange(height) + 0.5 <= bottom)
    inside_x = (np.arange(width) + 0.5 >= left) & (np.arange(width) + 0.5 <= right)
    grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys), axis=-1)).float()
    grid[..., 0] = (grid[..., 0] + 0.5) * 2 / mask.shape[1] - 1  # grid_sample's [-1, 1] (align_corners=False)
    grid[..., 1] = (grid[..., 1] + 0.5) * 2 / mask.shape[0] - 1
    sampled = F.grid_sample(torch.from_numpy(np.float32(mask))[None, None], grid[None], mode="bilinear",
                            padding_mode="border", align_corners=False)[0, 0].numpy()
    sampled[~(inside_y[:, None] & inside_x[None, :])] = np.nan
    return sampled


def overlay_on_photo(rgb: np.ndarray, photo_mask: np.ndarray) -> np.ndarray:
    """The photo with the heatmap blended in over the crop box; outside it the photo is greyed and dimmed."""
    inside = ~np.isnan(photo_mask)
    out = (np.float32(rgb) * 0.35 + 0.65 * 128).astype(np.uint8)
    if inside.any():
        blended = overlay(rgb, np.nan_to_num(photo_mask))
        out[inside] = blended[inside]
    return out


__all__ = ["AUGMENTATIONS", "DEFAULT_LAYER", "METHODS", "CamMaps", "Explanation", "channel_weights", "find_layer",
           "grad_cam", "heatmap_on_photo", "jet", "layer_maps", "overlay", "overlay_on_photo", "resolve_target",
           "scaled_maps", "weighted_maps"]
