"""What a training recipe is made of: the recipes themselves (as data), TensorFlow's RMSProp, the learning-rate
schedule (a pure function of the step, which exact resume rests on), synchronised BN, the weights' moving
average, and the seeded RandomResizedCrop."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """A training recipe. ``lr`` is for ``reference_batch`` images per step and scales linearly with the
    global batch (Goyal et al. 2017), unless ``--lr`` gives it outright."""

    name: str
    citation: str
    optimizer: str  # "rmsprop-tf" or "sgd"
    lr: float
    reference_batch: int
    momentum: float
    weight_decay: float
    schedule: str  # "exponential" (staircase) or "cosine"
    epochs: int
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0
    label_smoothing: float = 0.0
    aux_weight: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    augment: bool = True
    decay_norm_and_bias: bool = True
    backbone_lr_scale: float = 1.0
    from_pretrained: bool = False


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "paper", "Szegedy et al. 2016, 'Rethinking the Inception Architecture', sec. 8: RMSProp (decay 0.9, "
            "eps 1.0) at lr 0.045 decayed x0.94 every 2 epochs, gradient clipping at 2.0, label smoothing 0.1, "
            "auxiliary head, moving average of the weights for evaluation. Momentum 0.9 and weight decay 4e-5 "
            "on conv/fc weights are TF-slim's defaults for this model, which the paper does not state.",
            optimizer="rmsprop-tf", lr=0.045, reference_batch=32, momentum=0.9, weight_decay=4e-5,
            schedule="exponential", epochs=100, label_smoothing=0.1, aux_weight=0.4, grad_clip=2.0,
            ema_decay=0.9999, decay_norm_and_bias=False,
        ),
        Recipe(
            "mmpretrain-8xb32", "mmpretrain configs/inception_v3/inception-v3_8xb32_in1k.py with "
            "_base_/schedules/imagenet_bs256_coslr.py: SGD lr 0.1 (batch 256), momentum 0.9, weight decay 1e-4 "
            "on every parameter, cosine decay to 0 over 100 epochs, RandomResizedCrop(299) and a flip.",
            optimizer="sgd", lr=0.1, reference_batch=256, momentum=0.9, weight_decay=1e-4, schedule="cosine",
            epochs=100,
        ),
        Recipe(
            "finetune", "Pretrained weights and a new head: SGD lr 0.01 (batch 256) for the head and a tenth of it "
            "for the backbone, momentum 0.9, weight decay 1e-4, cosine decay, label smoothing 0.1.",
            optimizer="sgd", lr=0.01, reference_batch=256, momentum=0.9, weight_decay=1e-4, schedule="cosine",
            epochs=10, label_smoothing=0.1, backbone_lr_scale=0.1, from_pretrained=True,
        ),
    )
}


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow defines it, which is what the paper's eps = 1.0 refers to: eps inside the square
    root, the mean square initialised to 1, and the learning rate applied inside the momentum:
    ``ms = d ms + (1 - d) g^2;  mom = m mom + lr g / sqrt(ms + eps);  w -= mom``.
    (``torch.optim.RMSprop`` puts eps outside the root, where 1.0 means something else.)"""

    def __init__(self, params, lr: float, decay: float = 0.9, momentum: float = 0.9, eps: float = 1.0,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                state["ms"].mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                update = grad / (state["ms"] + group["eps"]).sqrt()
                state["mom"].mul_(group["momentum"]).add_(update, alpha=group["lr"])
                p.sub_(state["mom"])


def learning_rate(recipe: Recipe, base_lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The recipe's schedule as a pure function of the step, so that a resumed run needs no scheduler state."""
    if recipe.schedule == "exponential":
        return base_lr * recipe.decay_rate ** math.floor(step / steps_per_epoch / recipe.decay_epochs)
    if recipe.schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


# ---------------------------------------------------------------------------------------------
# Pieces of the model's training set-up


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of every process, on the CPU too (PyTorch's
    ``SyncBatchNorm`` needs a GPU). Sums and squared sums go through one differentiable all-reduce. It keeps
    BatchNorm2d's parameters and buffers, so checkpoints are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # Two passes (the mean, then the squared deviations from it), each summed over every process: the
        # one-pass E[x^2] - E[x]^2 cancels badly where a channel barely varies over a small batch.
        synced = dist.is_initialized() and dist.get_world_size() > 1
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.new_tensor([x.numel() / x.shape[1]])])
        total = dist_nn.all_reduce(local) if synced else local
        count = total[-1]
        mean = total[:-1] / count
        centred = x - mean[None, :, None, None]
        squares = (centred * centred).sum(dim=(0, 2, 3))
        var = (dist_nn.all_reduce(squares) if synced else squares) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
            unbiased = var.detach() * (count / (count - 1))
            self.running_var.mul_(1 - self.momentum).add_(unbiased, alpha=self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for the synchronised one (PyTorch's own on CUDA). The new layer takes the old one's
    device and dtype: built in the default float32, it silently ran a float64 run's BN in float32."""
    if next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum,
                                         device=child.running_mean.device, dtype=child.running_mean.dtype)
                synced.load_state_dict(child.state_dict())
                setattr(module, name, synced)
    return model


class ModelEMA:
    """An exponential moving average of the weights (buffers copied), used for evaluation. The decay warms up
    as ``min(decay, (1 + n) / (10 + n))`` so that short runs are not dominated by the random start."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._averaged = {name for name, p in self.module.named_parameters() if p.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        for name, value in self.module.state_dict().items():
            if name in self._averaged:
                value.mul_(decay).add_(live[name].detach(), alpha=1 - decay)
            else:
                value.copy_(live[name])


def random_resized_crop(rgb: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = True) -> np.ndarray:
    """Inception-style crop (torchvision's RandomResizedCrop rule: 10 tries, then the centre at a clamped ratio)
    resized to ``size`` x ``size`` with bilinear interpolation, and a horizontal flip half the time."""
    height, width = rgb.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        w, h = (width, int(round(width / ratio[0]))) if in_ratio < ratio[0] else (
            (int(round(height * ratio[1])), height) if in_ratio > ratio[1] else (width, height))
        w, h = min(w, width), min(h, height)
        top, left = (height - h) // 2, (width - w) // 2
    crop = cv2.resize(np.ascontiguousarray(rgb[top:top + h, left:left + w]), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    if flip and rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    return crop


__all__ = ["RECIPES", "ModelEMA", "Recipe", "SyncBatchNorm2d", "TFRMSprop", "convert_sync_batchnorm", "learning_rate",
           "random_resized_crop"]
