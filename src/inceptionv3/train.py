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
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoints import count_include_pad_for
from .data import ImageDataset, load_dataset, split_dataset
from .decode import load_image
from .errors import DatasetError, InputError
from .model import InceptionV3, init_new_head, is_head
from .options import option
from .preprocess import PRESETS, Preprocess
from .recipes import RECIPES, ModelEMA, Recipe, TFRMSprop, convert_sync_batchnorm, learning_rate, random_resized_crop
from .run_dir import RunDir
from .runtime import rank_world, select_device

FREEZE_MODES = ("none", "bn", "backbone")


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
    freeze: str = option("none", choices=FREEZE_MODES, help="bn: BatchNorm layers keep their weights and running "
                         "statistics; backbone: also every weight but the classifier heads")
    workers: int = option(4, help="decoding and augmentation threads per process")
    seed: int = option(0)
    save_every: int = option(100, help="steps between saves (and every epoch end)")
    log_every: int = option(10, help="steps between log lines")
    device: str | None = option(help="cuda, mps or cpu")
    extra: dict = field(default_factory=dict)


def load_splits(config: TrainConfig) -> tuple[ImageDataset, ImageDataset | None]:
    """The training set and the validation set (``--val``, ``--val-split`` of ``--data``, or none)."""
    dataset = load_dataset(config.data, label_by=config.label_by)
    if config.val:
        return dataset, load_dataset(config.val, label_by=config.label_by)
    if config.val_split:
        return split_dataset(dataset, config.val_split, seed=config.seed)
    return dataset, None


def build_training_model(config: TrainConfig, recipe: Recipe, num_classes: int) -> tuple[InceptionV3, Preprocess]:
    """The network to train and its preprocessing: the recipe's pretrained weights or ``--weights`` with a new head
    where the classes differ, else fresh weights (seeded by the caller). The auxiliary head pools the 17 x 17 grid
    with a 5 x 5 window and then a 5 x 5 conv: it only fits inputs of 299 and up, so smaller runs go without."""
    from .weights import get_entry, get_model, resolve_model

    aux = recipe.aux_weight > 0 and config.img_size >= 299
    entry = get_entry(config.model) if config.model else None
    base = entry.preprocess if entry else PRESETS["mmpretrain"]
    if recipe.from_pretrained or config.weights:
        choice = resolve_model(config.model, config.weights)  # neither: the default model
        model = get_model(choice.name_or_path, choice.pretrained, aux_logits=False, dropout=config.dropout)
        base = model.weights_info.preprocess
        new_head = model.num_classes != num_classes or aux
        if new_head:
            fresh = InceptionV3(num_classes=num_classes, aux_logits=aux, dropout=config.dropout,
                                count_include_pad=model.count_include_pad)
            state = {k: v for k, v in model.state_dict().items() if not is_head(k)}
            missing, _ = fresh.load_state_dict(state, strict=False)
            assert all(is_head(k) for k in missing), missing
            model = fresh
    else:
        new_head = True
        model = InceptionV3(num_classes=num_classes, aux_logits=aux, dropout=config.dropout,
                            count_include_pad=count_include_pad_for(entry.source) if entry else True)
    if new_head:
        for head in model.heads():  # near uniform: see init_new_head
            init_new_head(head)
    return model, base.with_crop(config.img_size)


def freeze(model: nn.Module, mode: str) -> None:
    """``bn``: every BatchNorm layer keeps its weights (and, in ``train_mode``, its running statistics);
    ``backbone``: also every weight outside the classifier heads (``model.is_head``)."""
    if mode not in FREEZE_MODES:
        raise InputError(f"--freeze must be none, bn or backbone, got {mode!r}")
    for name, p in model.named_parameters():
        if mode == "backbone" and not is_head(name):
            p.requires_grad_(False)
    if mode != "none":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)


def train_mode(model: nn.Module, frozen: str) -> None:
    model.train()
    if frozen != "none":  # frozen BN keeps its running statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def build_optimizer(model: nn.Module, recipe: Recipe, base_lr: float) -> torch.optim.Optimizer:
    """One parameter group per (learning-rate scale, weight decay): the backbone may learn slower than the heads,
    and norms and biases may go without decay."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = 1.0 if is_head(name) else recipe.backbone_lr_scale
            decay = recipe.weight_decay if (recipe.decay_norm_and_bias or p.ndim > 1) else 0.0
            groups.setdefault((scale, decay), []).append(p)
    params = [{"params": ps, "lr_scale": scale, "weight_decay": decay, "lr": base_lr * scale}
              for (scale, decay), ps in groups.items()]
    if recipe.optimizer == "rmsprop-tf":
        return TFRMSprop(params, lr=base_lr, decay=recipe.rmsprop_decay, momentum=recipe.momentum,
                         eps=recipe.rmsprop_eps)
    return torch.optim.SGD(params, lr=base_lr, momentum=recipe.momentum)


class Batches:
    """The training batches of one rank, from any step on: the epoch's order from (seed, epoch), each sample's
    augmentation from (seed, epoch, index), so that a resumed run sees the same images as an unbroken one."""

    def __init__(self, config: TrainConfig, recipe: Recipe, dataset: ImageDataset, preprocess: Preprocess,
                 rank: int, world: int) -> None:
        self.config, self.dataset, self.preprocess, self.rank = config, dataset, preprocess, rank
        self.augment = config.augment and recipe.augment
        self.global_batch = config.batch_size * world
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DatasetError(f"--data {config.data}: {len(dataset)} training images cannot fill one global "
                               f"batch of {self.global_batch}")
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def sample(self, index: int, epoch: int) -> np.ndarray:
        c = self.config
        rgb = load_image(self.dataset.items[index], **self.preprocess.decode_options, name=self.dataset.names[index])
        if self.augment:
            rng = np.random.default_rng([c.seed, epoch, index])
            return random_resized_crop(rgb, c.img_size, rng, scale=(c.crop_scale, 1.0), flip=c.flip)
        return self.preprocess.crop_image(rgb)

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """The epoch of ``step`` and this rank's samples in it; the order is drawn once per epoch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.config.seed, epoch, 7]).permutation(len(self.dataset)))
        start = position * self.global_batch + self.rank * self.config.batch_size
        return epoch, self._order[1][start:start + self.config.batch_size]

    def iterate(self, first: int, total: int, pool: ThreadPoolExecutor) -> Iterator[tuple[int, torch.Tensor,
                                                                                        torch.Tensor]]:
        """(step, images, labels) from ``first`` to ``total``; decoding runs two steps ahead."""
        pending: deque = deque()
        next_step = first
        while True:
            while len(pending) < 3 and next_step < total:
                epoch, chosen = self.indices(next_step)
                pending.append((next_step, chosen, [pool.submit(self.sample, int(i), epoch) for i in chosen]))
                next_step += 1
            if not pending:
                return
            step, chosen, futures = pending.popleft()
            images = self.preprocess.normalize(np.stack([f.result() for f in futures]))
            yield step, images, torch.from_numpy(self.dataset.labels[chosen])


class Trainer:
    """One training run in ``config.out``. Build it, then call ``run()``; ``Trainer.resume(dir)`` continues."""

    def __init__(self, config: TrainConfig, resuming: bool = False):
        c = self.config = config
        for name in ("batch_size", "log_every", "save_every"):
            if getattr(c, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        self.recipe = RECIPES[c.recipe]
        self.rank, self.world = rank_world()
        self.device = select_device(c.device or None)
        self.run_dir = RunDir(c.out, self.rank)
        if not resuming:
            self.run_dir.refuse_existing()
        self.train_set, self.val_set = load_splits(c)
        torch.manual_seed(c.seed)  # the initial weights (a resumed run overwrites them with its saved ones)
        model, self.preprocess = build_training_model(c, self.recipe, self.train_set.num_classes)
        self.batches = Batches(c, self.recipe, self.train_set, self.preprocess, self.rank, self.world)
        self.global_batch, self.steps_per_epoch = self.batches.global_batch, self.batches.steps_per_epoch
        self.total_steps = c.max_steps or (c.epochs or self.recipe.epochs) * self.steps_per_epoch
        model.to(self.device, dtype=torch.float64 if c.float64 else torch.float32)
        if c.sync_bn:
            model = convert_sync_batchnorm(model)
        if c.channels_last:
            model = model.to(memory_format=torch.channels_last)
        freeze(model, c.freeze)
        self.model = model
        self.ema = ModelEMA(model, self.recipe.ema_decay) if self.recipe.ema_decay else None
        self.net: nn.Module = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if c.compile:
            self.net = torch.compile(self.net)
        self.base_lr = c.lr if c.lr is not None else self.recipe.lr * self.global_batch / self.recipe.reference_batch
        self.optimizer = build_optimizer(model, self.recipe, self.base_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.recipe.label_smoothing)
        self.step, self.best = 0, -1.0

    @property
    def aux_head(self) -> bool:
        return self.model.aux_logits

    # --- the loop -----------------------------------------------------------------------------

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        wide = torch.float64 if c.float64 else torch.float32  # the loss never in half precision
        images = images.to(self.device, dtype=wide, non_blocking=True)
        if c.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.amp or "")
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.net(images)
            if isinstance(out, tuple):  # InceptionOutputs(logits, aux_logits)
                return (self.criterion(out[0].to(wide), labels)
                        + self.recipe.aux_weight * self.criterion(out[1].to(wide), labels))
            return self.criterion(out.to(wide), labels)

    def _train_step(self, step: int, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One optimizer step; the learning rate and the global batch's mean loss."""
        lr = learning_rate(self.recipe, self.base_lr, step, self.steps_per_epoch, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss = self._loss(images, labels)
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
        if self.world > 1:  # the global batch's loss, not rank 0's share
            dist.all_reduce(reported)
            reported /= self.world
        return lr, float(reported)

    def run(self) -> dict:
        from tqdm import tqdm

        c = self.config
        if self.step == 0:
            self.run_dir.start(self.resolved_config())
            torch.manual_seed(c.seed * 1000 + self.rank)
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=self.rank != 0, dynamic_ncols=True)
        train_mode(self.model, c.freeze)
        window_start, window_images, losses = time.perf_counter(), 0, []
        with ThreadPoolExecutor(max_workers=max(1, c.workers), thread_name_prefix="inceptionv3-train") as pool:
            for step, images, labels in self.batches.iterate(self.step, self.total_steps, pool):
                lr, loss = self._train_step(step, images, labels)
                losses.append(loss)
                window_images += len(labels) * self.world
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                if self.step % c.log_every == 0 or self.step == self.total_steps:
                    self.run_dir.log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                      "loss": float(np.mean(losses)), "lr": lr,
                                      "img_per_s": window_images / (time.perf_counter() - window_start)})
                    window_start, window_images, losses = time.perf_counter(), 0, []
                epoch_end, last = self.step % self.steps_per_epoch == 0, self.step == self.total_steps
                # Validation and saving must not draw from the training RNG (building a model for the saved
                # file would), or a resumed run, which skips them, would draw different dropout masks; and the
                # state saved is the training RNG's as it is here, before validation builds anything.
                rng = self._rng_state()
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    if epoch_end or last:
                        self._validate()
                    if epoch_end or last or self.step % c.save_every == 0:
                        self._save(rng)
        bar.close()
        if self.rank == 0:
            from .visualize import save_curves

            save_curves(self.run_dir.path / "curves.png", self.run_dir.records(),
                        title=f"{c.recipe} on {os.path.basename(c.data)}")
        return {"step": self.step, "best_val_top1": self.best}

    def _validate(self) -> None:
        """Score the weights being trained, in eager PyTorch: an exported backend would write a ~90 MB file to the
        cache at every validation, and its cache could hand back the export of the starting weights."""
        from .evaluate import accuracy_metrics, score
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
        train_mode(self.model, self.config.freeze)
        if scores is not None:
            result, _ = accuracy_metrics(scores, self.train_set.num_classes)
            self.run_dir.log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                              "val_top1": result["top1"], "val_top5": result["top5"]})
            if result["top1"] > self.best:
                self.best = result["top1"]
                self._save_weights("best")
        if self.world > 1:
            best = [self.best]
            dist.broadcast_object_list(best, src=0)
            self.best = best[0]

    # --- files ----------------------------------------------------------------------------------

    def resolved_config(self) -> dict:
        return {**dataclasses.asdict(self.config), "recipe_settings": dataclasses.asdict(self.recipe),
                "aux_head": self.aux_head, "processes": self.world, "global_batch": self.global_batch,
                "base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "train_images": len(self.train_set),
                "val_images": len(self.val_set) if self.val_set is not None else 0,
                "class_names": list(self.train_set.class_names), "preprocess": self.preprocess.describe(),
                "torch": torch.__version__}

    def _save_weights(self, name: str) -> None:
        model = self.ema.module if self.ema is not None else self.model
        self.run_dir.save_weights(model, name, list(self.train_set.class_names), self.preprocess.name)

    def _rng_state(self) -> list[torch.Tensor]:
        return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [])

    def _save(self, rng: list[torch.Tensor]) -> None:
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        self._save_weights("last")
        self.run_dir.save_state({
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0, "rng": rngs, "best": self.best,
            "world": self.world})

    @classmethod
    def resume(cls, run_dir: str | os.PathLike) -> Trainer:
        """Continue a run with its own settings from its last atomic save; later log lines are dropped."""
        saved = RunDir(run_dir).config()
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        trainer = cls(TrainConfig(**{k: v for k, v in saved.items() if k in fields}), resuming=True)
        if not trainer.run_dir.has_state:
            return trainer  # killed before its first save: start again from step 0
        state = trainer.run_dir.load_state(trainer.device)
        if state["world"] != trainer.world:
            raise InputError(f"{run_dir} was trained on {state['world']} processes; resume it on the same number")
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(state["ema"])
            trainer.ema.updates = state["ema_updates"]
        cpu_rng, *cuda_rng = state["rng"][trainer.rank]  # loaded onto the device: RNG states must be CPU tensors
        torch.set_rng_state(cpu_rng.cpu())
        if cuda_rng and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng[0].cpu(), trainer.device)
        trainer.step, trainer.best = state["step"], state["best"]
        if trainer.step < trainer.total_steps:  # a finished run is left as it is
            trainer.run_dir.cut_log(trainer.step)
        return trainer


__all__ = ["FREEZE_MODES", "Batches", "TrainConfig", "Trainer", "build_optimizer", "build_training_model", "freeze",
           "load_splits", "train_mode"]
