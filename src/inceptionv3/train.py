"""Training and fine-tuning: the paper's recipe, mmpretrain's 8xb32 recipe and a fine-tuning recipe, on one
process or under torchrun, resumable to the bit.

Exact resume rests on four rules: every random choice comes from a seed (the epoch's sample order from
(seed, epoch), each sample's augmentation from (seed, epoch, index), dropout from the saved RNG state); the
learning rate is a pure function of the step; the full state (weights, optimizer, EMA, RNG, step) is written
atomically; and the log is cut back to the saved step on resume. A run killed at any moment and resumed
then ends with the same bits as a run that was never interrupted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from .checkpoints import count_include_pad_for, save_canonical
from .data import load_dataset, split_dataset
from .decode import load_image
from .errors import DatasetError, InputError
from .files import atomic_path
from .model import InceptionV3, init_new_head, is_head
from .options import option
from .preprocess import PRESETS, Preprocess
from .runtime import rank_world, select_device

STATE_FILE = "state.pt"


# ---------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """A training recipe. ``lr`` is for ``reference_batch`` images per step and scales linearly with the
    global batch (Goyal et al. 2017), unless ``--lr`` gives it outright."""

    name: str
    source: str
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


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainConfig:
    """Everything ``inceptionv3 train`` was asked for; saved as config.json and reused by ``--resume``.

    Each field is also its command-line flag (``--batch-size`` for ``batch_size``), with the help text and choices
    given here: ``cli.py`` builds the flags from these fields, so an option lives in one place."""

    data: str = option(help="class folders, annotation file, digits .csv.gz or an Omniglot .zip")
    out: str = option(help="the run directory")
    recipe: str = option("paper", choices=tuple(sorted(RECIPES)))
    val: str | None = option(help="a separate validation set (same forms as --data)")
    val_split: float | None = option(help="hold out this fraction of each class of --data instead")
    label_by: str = option("alphabet", choices=("alphabet", "character"), help="Omniglot labels")
    model: str | None = option(help="zoo entry: its preprocessing, and its weights for --recipe finetune (default "
                               "there: the default model)")
    weights: str | None = option(help="start from this checkpoint (with --model: loaded into that entry)")
    epochs: int | None = option(help="default: the recipe's")
    max_steps: int | None = option(help="stop after this many optimizer steps instead of --epochs")
    batch_size: int = option(32, help="per process")
    lr: float | None = option(help="absolute learning rate (default: the recipe's, scaled by the global batch)")
    img_size: int = option(299)
    amp: str | None = option(choices=("bf16", "fp16"))
    float64: bool = option(False, help="train in float64: to check distributed runs beyond fp32 rounding")
    channels_last: bool = option(False)
    compile: bool = option(False, help="torch.compile the training step")
    sync_bn: bool = option(False, help="batch statistics over all processes")
    dropout: float = option(0.5)
    augment: bool = option(True, help="RandomResizedCrop and flips (--no-augment: centre crops)")
    flip: bool = option(True, help="horizontal flips (--no-flip for digits and letters, which are not symmetric)")
    crop_scale: float = option(0.08, help="smallest area fraction of RandomResizedCrop")
    freeze: str = option("none", choices=("none", "bn", "backbone"))
    workers: int = option(4, help="decoding and augmentation threads per process")
    seed: int = option(0)
    save_every: int = option(100, help="steps between saves (and every epoch end)")
    log_every: int = option(10, help="steps between log lines")
    device: str | None = option(help="cuda, mps or cpu")
    extra: dict = field(default_factory=dict)


def _atomic_torch_save(obj, path: Path) -> None:
    """All or nothing, with the permissions any new file gets here (the umask's, usually 0644)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Trainer:
    """One training run in ``config.out``. Build it, then call ``run()``; ``Trainer.resume(dir)`` continues."""

    def __init__(self, config: TrainConfig, resuming: bool = False):
        self.config = config
        self.recipe = RECIPES[config.recipe]
        self.out = Path(config.out)
        self.rank, self.world = rank_world()
        self.device = select_device(config.device or None)
        if not resuming and self.rank == 0 and (self.out / STATE_FILE).exists():
            raise FileExistsError(f"{self.out} already holds a run; use --resume {self.out} or another --out")
        self._build_data()
        torch.manual_seed(config.seed)  # the initial weights (a resumed run overwrites them with its saved ones)
        self._build_model()
        self._build_optimizer()
        self.step = 0
        self.best = -1.0
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    # --- set-up -------------------------------------------------------------------------------

    def _build_data(self) -> None:
        c = self.config
        dataset = load_dataset(c.data, label_by=c.label_by)
        if c.val:
            train, val = dataset, load_dataset(c.val, label_by=c.label_by)
        elif c.val_split:
            train, val = split_dataset(dataset, c.val_split, seed=c.seed)
        else:
            train, val = dataset, None
        self.train_set, self.val_set = train, val
        self.global_batch = c.batch_size * self.world
        self.steps_per_epoch = len(train) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DatasetError(f"--data {c.data}: {len(train)} training images cannot fill one global batch of "
                               f"{self.global_batch}")
        epochs = c.epochs or self.recipe.epochs
        self.total_steps = c.max_steps or epochs * self.steps_per_epoch

    def _build_model(self) -> None:
        from .weights import get_entry, get_model, resolve_model

        c = self.config
        num_classes = self.train_set.num_classes
        # The auxiliary head pools the 17 x 17 grid with a 5 x 5 window and then a 5 x 5 conv: it only fits
        # inputs of 299 and up, so smaller runs train without it (recorded in config.json as aux_head).
        aux = self.recipe.aux_weight > 0 and c.img_size >= 299
        self.aux_head = aux
        entry = get_entry(c.model) if c.model else None
        base = entry.preprocess if entry else PRESETS["mmpretrain"]
        new_head = True
        if self.recipe.from_pretrained or c.weights:
            choice = resolve_model(c.model, c.weights)  # neither: the default model
            model = get_model(choice.name_or_path, choice.pretrained, aux_logits=False, dropout=c.dropout)
            base = model.weights_info.preprocess
            if model.num_classes != num_classes or aux:
                fresh = InceptionV3(num_classes=num_classes, aux_logits=aux, dropout=c.dropout,
                                    count_include_pad=model.count_include_pad)
                state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
                missing, _ = fresh.load_state_dict(state, strict=False)
                assert all(is_head(k) for k in missing), missing
                model = fresh
            else:
                new_head = False
        else:
            model = InceptionV3(num_classes=num_classes, aux_logits=aux, dropout=c.dropout,
                                count_include_pad=count_include_pad_for(entry.source) if entry else True)
        if new_head:
            for head in model.heads():  # near uniform: see init_new_head
                init_new_head(head)
        self.preprocess: Preprocess = base.with_crop(c.img_size)
        model.to(self.device, dtype=torch.float64 if c.float64 else torch.float32)
        if c.sync_bn:
            model = convert_sync_batchnorm(model)
        if c.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._apply_freeze(model)
        self.model = model
        self.ema = ModelEMA(model, self.recipe.ema_decay) if self.recipe.ema_decay else None
        self.net: nn.Module = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if c.compile:
            self.net = torch.compile(self.net)

    def _apply_freeze(self, model: nn.Module) -> None:
        mode = self.config.freeze
        if mode not in ("none", "bn", "backbone"):
            raise InputError(f"--freeze must be none, bn or backbone, got {mode!r}")
        for name, p in model.named_parameters():
            if mode == "backbone" and not is_head(name):
                p.requires_grad_(False)
        if mode in ("bn", "backbone"):
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    for p in module.parameters():
                        p.requires_grad_(False)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.config.freeze in ("bn", "backbone"):  # frozen BN keeps its running statistics
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()

    def _build_optimizer(self) -> None:
        c, r = self.config, self.recipe
        self.base_lr = c.lr if c.lr is not None else r.lr * self.global_batch / r.reference_batch
        groups: dict[tuple[float, float], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            scale = 1.0 if is_head(name) else r.backbone_lr_scale
            decay = r.weight_decay if (r.decay_norm_and_bias or p.ndim > 1) else 0.0
            groups.setdefault((scale, decay), []).append(p)
        params = [{"params": ps, "lr_scale": scale, "weight_decay": decay, "lr": self.base_lr * scale}
                  for (scale, decay), ps in groups.items()]
        if r.optimizer == "rmsprop-tf":
            self.optimizer = TFRMSprop(params, lr=self.base_lr, decay=r.rmsprop_decay, momentum=r.momentum,
                                       eps=r.rmsprop_eps)
        else:
            self.optimizer = torch.optim.SGD(params, lr=self.base_lr, momentum=r.momentum)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)

    # --- data -----------------------------------------------------------------------------------

    def _sample(self, index: int, epoch: int) -> np.ndarray:
        c = self.config
        rgb = load_image(self.train_set.items[index], **self.preprocess.decode_options,
                         name=self.train_set.names[index])
        if c.augment and self.recipe.augment:
            rng = np.random.default_rng([c.seed, epoch, index])
            return random_resized_crop(rgb, c.img_size, rng, scale=(c.crop_scale, 1.0), flip=c.flip)
        return self.preprocess.crop_image(rgb)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order, drawn once per epoch (not once per step) from (seed, epoch)."""
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.config.seed, epoch, 7]).permutation(len(self.train_set)))
        return self._order[1]

    def _batches(self, pool: ThreadPoolExecutor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, images, labels) for this rank from ``self.step`` on; decoding runs two steps ahead."""
        b = self.config.batch_size

        def indices(step: int) -> np.ndarray:
            epoch, position = divmod(step, self.steps_per_epoch)
            start = position * self.global_batch + self.rank * b
            return self._epoch_order(epoch)[start:start + b]

        pending: deque = deque()
        next_step = self.step
        while True:
            while len(pending) < 3 and next_step < self.total_steps:
                chosen = indices(next_step)
                epoch = next_step // self.steps_per_epoch
                pending.append((next_step, chosen, [pool.submit(self._sample, int(i), epoch) for i in chosen]))
                next_step += 1
            if not pending:
                return
            step, chosen, futures = pending.popleft()
            images = self.preprocess.normalize(np.stack([f.result() for f in futures]))
            yield step, images, torch.from_numpy(self.train_set.labels[chosen])

    # --- the loop -----------------------------------------------------------------------------

    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        images = images.to(self.device, dtype=torch.float64 if c.float64 else torch.float32, non_blocking=True)
        if c.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.amp or "")
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.net(images)
            if isinstance(out, tuple):  # InceptionOutputs(logits, aux_logits)
                return self.criterion(self._wide(out[0]), labels) + self.recipe.aux_weight * self.criterion(
                    self._wide(out[1]), labels)
            return self.criterion(self._wide(out), labels)

    def _wide(self, logits: torch.Tensor) -> torch.Tensor:
        """The loss in float32 at least (AMP logits are half precision), float64 when training in it."""
        return logits.double() if self.config.float64 else logits.float()

    def run(self) -> dict:
        from tqdm import tqdm

        c = self.config
        if self.step == 0 and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.resolved_config(), indent=2) + "\n")
            (self.out / "log.jsonl").write_text("")
        if self.step == 0:
            torch.manual_seed(c.seed * 1000 + self.rank)
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=self.rank != 0,
                   dynamic_ncols=True)
        self._set_train_mode()
        window_start, window_images, losses = time.perf_counter(), 0, []
        with ThreadPoolExecutor(max_workers=max(1, c.workers), thread_name_prefix="inceptionv3-train") as pool:
            for step, images, labels in self._batches(pool):
                lr = learning_rate(self.recipe, self.base_lr, step, self.steps_per_epoch, self.total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                loss = self._forward_loss(images, labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.recipe.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step = step + 1
                reported = loss.detach().float()
                if self.world > 1:  # log the global batch's loss, not rank 0's share
                    dist.all_reduce(reported)
                    reported /= self.world
                losses.append(float(reported))
                window_images += len(labels) * self.world
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
                if self.step % c.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    self._log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                               "loss": float(np.mean(losses)), "lr": lr, "img_per_s": window_images / elapsed})
                    window_start, window_images, losses = time.perf_counter(), 0, []
                epoch_end = self.step % self.steps_per_epoch == 0
                # Validation and saving must not draw from the training RNG (building a model for the saved
                # file would), or a resumed run, which skips them, would draw different dropout masks.
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    if epoch_end or self.step == self.total_steps:
                        self._validate()
                    if epoch_end or self.step % c.save_every == 0 or self.step == self.total_steps:
                        self._save()
        bar.close()
        if self.rank == 0:
            self._plot()
        return {"step": self.step, "best_val_top1": self.best}

    def _validate(self) -> None:
        """Score the weights being trained, in eager PyTorch: an exported backend would write a ~90 MB file to the
        cache at every validation, and its cache could hand back the export of the starting weights."""
        from .evaluate import metrics, score
        from .inference import Classifier

        if self.val_set is None:
            return
        model = self.ema.module if self.ema is not None else self.model
        if self.config.float64:
            model = copy.deepcopy(model).float()
        classifier = Classifier(model, preprocess=self.preprocess, class_names=self.train_set.class_names,
                                device=self.device, batch_size=max(self.config.batch_size, 32),
                                workers=self.config.workers, backend="eager")
        scores = score([classifier], self.val_set, progress=self.rank == 0)  # a bar on stderr, rank 0 only
        self._set_train_mode()
        if scores is not None:
            result, _ = metrics(scores, self.train_set.num_classes)
            self.last_val = {"val_top1": result["top1"], "val_top5": result["top5"]}
            self._log({"step": self.step, "epoch": self.step / self.steps_per_epoch, **self.last_val})
            if result["top1"] > self.best:
                self.best = result["top1"]
                self._save_weights(self.out / "best.safetensors")
        if self.world > 1:
            best = [self.best]
            dist.broadcast_object_list(best, src=0)
            self.best = best[0]

    # --- files ----------------------------------------------------------------------------------

    def resolved_config(self) -> dict:
        return {
            **dataclasses.asdict(self.config),
            "recipe_settings": dataclasses.asdict(self.recipe),
            "aux_head": self.aux_head,
            "processes": self.world,
            "global_batch": self.global_batch,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "train_images": len(self.train_set),
            "val_images": len(self.val_set) if self.val_set is not None else 0,
            "class_names": list(self.train_set.class_names),
            "preprocess": self.preprocess.describe(),
            "torch": torch.__version__,
        }

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def _save_weights(self, path: Path) -> None:
        model = self.ema.module if self.ema is not None else self.model
        plain = InceptionV3(num_classes=model.num_classes, aux_logits=model.aux_logits, dropout=model.dropout.p,
                            count_include_pad=model.count_include_pad, init_weights=False)
        plain.load_state_dict(model.state_dict())
        save_canonical(plain, path, source="inceptionv3", class_names=list(self.train_set.class_names),
                       preprocess=self.preprocess.name)

    def _save(self) -> None:
        rng = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [])
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if self.rank != 0:
            return
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "rng": rngs,
            "best": self.best,
            "world": self.world,
        }
        self._save_weights(self.out / "last.safetensors")
        _atomic_torch_save(state, self.out / STATE_FILE)

    def _plot(self) -> None:
        from .visualize import save_curves

        records = [json.loads(line) for line in (self.out / "log.jsonl").read_text().splitlines() if line]
        save_curves(self.out / "curves.png", records, title=f"{self.config.recipe} on {Path(self.config.data).name}")

    @classmethod
    def resume(cls, run_dir: str | os.PathLike) -> Trainer:
        """Continue a run with its own settings from its last atomic save; later log lines are dropped."""
        run_dir = Path(run_dir)
        saved = json.loads((run_dir / "config.json").read_text())
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        trainer = cls(TrainConfig(**{k: v for k, v in saved.items() if k in fields}), resuming=True)
        if not (run_dir / STATE_FILE).exists():
            return trainer  # killed before its first save: start again from step 0
        state = torch.load(run_dir / STATE_FILE, weights_only=True, map_location=trainer.device)
        if state["world"] != trainer.world:
            raise InputError(f"{run_dir} was trained on {state['world']} processes; resume it on the same number")
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(state["ema"])
            trainer.ema.updates = state["ema_updates"]
        cpu_rng, *cuda_rng = state["rng"][trainer.rank]
        torch.set_rng_state(cpu_rng)
        if cuda_rng and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng[0], trainer.device)
        trainer.step, trainer.best = state["step"], state["best"]
        if trainer.rank == 0 and trainer.step < trainer.total_steps:  # a finished run is left as it is
            log = run_dir / "log.jsonl"
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= trainer.step]
            log.write_text("".join(line + "\n" for line in kept))
        return trainer
