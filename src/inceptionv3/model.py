"""Inception V3 (Szegedy et al. 2016, "Rethinking the Inception Architecture").

One module, with torchvision's submodule and parameter names, so that torchvision, timm and
mmpretrain state dicts map onto it key for key. Two things differ between the public ports and
are constructor options rather than subclasses:

* ``count_include_pad``: the 3x3 average pools inside the Inception blocks count the zero padding
  in torch ports (torchvision, timm, mmpretrain) and do not in TensorFlow ports (Keras, TF-slim).
* ``mixed_7c_pool='max'``: the FID network (TensorFlow's 2015-12-05 graph, 1008 classes, no aux head,
  ``count_include_pad=False``) max-pools in the last block's pool branch.
* there is no hidden input transform: torchvision's ``transform_input`` is folded into the first
  conv when a checkpoint is loaded (see :func:`inceptionv3.checkpoints.fold_transform_input`).
"""

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import InputError

MIN_INPUT_SIZE = 75
"""The smallest side the stem can reduce to a 1x1 map before Mixed_7c (as Keras also enforces)."""


class InceptionOutputs(NamedTuple):
    """What ``forward`` returns in training mode when the auxiliary head is enabled."""

    logits: Tensor
    aux_logits: Tensor


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as TensorFlow trained it) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _PoolBranchBlock(nn.Module):
    """Base of the blocks with a 3x3 average-pool branch; holds the padding convention."""

    def __init__(self, count_include_pad: bool) -> None:
        super().__init__()
        self.count_include_pad = count_include_pad

    def _avg_pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=self.count_include_pad)


class InceptionA(_PoolBranchBlock):
    """35x35 block: 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int, count_include_pad: bool = True) -> None:
        super().__init__(count_include_pad)
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(self._avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 grid reduction."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(_PoolBranchBlock):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int, count_include_pad: bool = True) -> None:
        super().__init__(count_include_pad)
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(self._avg_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 grid reduction."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(_PoolBranchBlock):
    """8x8 block with expanded filter banks (parallel 1x3 and 3x1).

    ``pool='max'`` makes the pool branch a 3x3 stride-1 max pool: the 2015-12-05 TensorFlow graph that FID
    is defined on has one in Mixed_7c (where every later release averages).
    """

    def __init__(self, in_channels: int, count_include_pad: bool = True, pool: str = "avg") -> None:
        super().__init__(count_include_pad)
        if pool not in ("avg", "max"):
            raise InputError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max" else self._avg_pool(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid; a regulariser during training, unused at inference."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv1(self.conv0(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class InceptionV3(nn.Module):
    """Inception V3 with torchvision's parameter names and a timm-style feature/head split.

    ``forward`` returns logits; only in training mode with ``aux_logits=True`` does it return
    :class:`InceptionOutputs` so the trainer can add the auxiliary loss.
    """

    num_features = 2048

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = False,
        dropout: float = 0.5,
        count_include_pad: bool = True,
        init_weights: bool = True,
        mixed_7c_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.count_include_pad = count_include_pad
        self.min_input_size = MIN_INPUT_SIZE
        pad = count_include_pad
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32, count_include_pad=pad)
        self.Mixed_5c = InceptionA(256, pool_features=64, count_include_pad=pad)
        self.Mixed_5d = InceptionA(288, pool_features=64, count_include_pad=pad)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, count_include_pad=pad)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, count_include_pad=pad)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, count_include_pad=pad)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, count_include_pad=pad)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, count_include_pad=pad)
        self.Mixed_7c = InceptionE(2048, count_include_pad=pad, pool=mixed_7c_pool)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        if init_weights:
            self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal as in the TF reference; loading a checkpoint overwrites all of it.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"InceptionV3 expects an N x 3 x H x W batch, got shape {list(x.shape)}")
        smallest = self.min_input_size
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise InputError(
                f"InceptionV3 needs inputs of at least {smallest}x{smallest}, "
                f"got {x.shape[2]}x{x.shape[3]}; resize the image first"
            )

    def _stem_to_6e(self, x: Tensor) -> Tensor:
        """The stem and the 35x35 and 17x17 blocks; the auxiliary head branches off here."""
        # N x 3 x 299 x 299
        x = self.Conv2d_1a_3x3(x)
        # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)
        # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)
        # N x 64 x 147 x 147
        x = self.maxpool1(x)
        # N x 64 x 73 x 73
        x = self.Conv2d_3b_1x1(x)
        # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)
        # N x 192 x 71 x 71
        x = self.maxpool2(x)
        # N x 192 x 35 x 35
        x = self.Mixed_5b(x)
        # N x 256 x 35 x 35
        x = self.Mixed_5c(x)
        # N x 288 x 35 x 35
        x = self.Mixed_5d(x)
        # N x 288 x 35 x 35
        x = self.Mixed_6a(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6b(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6c(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6d(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6e(x)
        # N x 768 x 17 x 17
        return x

    def _7a_to_7c(self, x: Tensor) -> Tensor:
        """The 8x8 blocks."""
        # N x 768 x 17 x 17
        x = self.Mixed_7a(x)
        # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)
        # N x 2048 x 8 x 8
        x = self.Mixed_7c(x)
        # N x 2048 x 8 x 8
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """The N x 2048 map before pooling: 8x8 at 299x299, smaller or larger with the input."""
        if not torch.jit.is_tracing():
            self._check_input(x)
        x = self._stem_to_6e(x)
        return self._7a_to_7c(x)

    @torch.jit.unused
    def feature_stages(self) -> list[str]:
        """The blocks ``forward_features`` runs, in order: the children as ``__init__`` registers them, up to
        Mixed_7c, without the auxiliary head (a test keeps this list and ``forward_features`` in step)."""
        names = [name for name, _ in self.named_children() if name != "AuxLogits"]
        return names[: names.index("Mixed_7c") + 1]

    @torch.jit.unused
    def forward_intermediates(self, x: Tensor, taps: Iterable[str]) -> dict[str, Tensor]:
        """Feature maps by name, from one pass that stops after the deepest block it needs (timm's idea).

        A tap names a stage (``"maxpool2"``, ``"Mixed_6e"``, ``"Mixed_7c"``: that block's output) or a module inside
        one (``"Mixed_6d.branch1x1"``: that module's output, captured while its block runs). The dict keeps the
        order of ``taps``. ``forward_intermediates(x, ["Mixed_7c"])["Mixed_7c"]`` is ``forward_features(x)``."""
        wanted = list(dict.fromkeys(str(tap) for tap in taps))
        stages = self.feature_stages()
        if not wanted:
            raise InputError("no feature taps requested")
        for tap in wanted:
            stage, _, inner = tap.partition(".")
            if stage not in stages or (inner and not _has_submodule(getattr(self, stage), inner)):
                raise InputError(f"unknown feature tap {tap!r}: name a stage ({', '.join(stages)}) or a module "
                                 "inside one, such as 'Mixed_6d.branch1x1'")
        last = max(stages.index(tap.partition(".")[0]) for tap in wanted)
        out: dict[str, Tensor] = {}

        def keep(tap: str):
            return lambda _module, _inputs, output: out.__setitem__(tap, output)

        hooks = [self.get_submodule(tap).register_forward_hook(keep(tap)) for tap in wanted if "." in tap]
        try:
            if not torch.jit.is_tracing():
                self._check_input(x)
            for name in stages[: last + 1]:
                x = getattr(self, name)(x)
                if name in wanted:
                    out[name] = x
        finally:
            for hook in hooks:
                hook.remove()
        return {tap: out[tap] for tap in wanted}

    @torch.jit.unused
    def forward_from(self, stage: str, x: Tensor) -> Tensor:
        """Logits from ``stage``'s output: the stages after it, then the head. Methods that change a block's
        output many times (Ablation-CAM) rerun only what lies after it."""
        stages = self.feature_stages()
        if stage not in stages:
            raise InputError(f"unknown stage {stage!r}: one of {', '.join(stages)}")
        for name in stages[stages.index(stage) + 1:]:
            x = getattr(self, name)(x)
        return self.forward_head(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pool, dropout and fc; ``pre_logits=True`` stops at the 2048-d pooled vector (FID)."""
        # N x 2048 x 8 x 8
        x = self.avgpool(x)
        # N x 2048 x 1 x 1
        x = torch.flatten(x, 1)
        # N x 2048
        if pre_logits:
            return x
        x = self.dropout(x)
        # N x 2048
        return self.fc(x)
        # N x num_classes

    def forward(self, x: Tensor) -> Tensor | InceptionOutputs:
        if self.training and self.AuxLogits is not None:
            if not torch.jit.is_tracing():
                self._check_input(x)
            x = self._stem_to_6e(x)
            # N x 768 x 17 x 17
            aux = self.AuxLogits(x)
            # N x num_classes
            x = self._7a_to_7c(x)
            return InceptionOutputs(self.forward_head(x), aux)
        x = self.forward_features(x)
        return self.forward_head(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def heads(self) -> list[nn.Linear]:
        """The classifier layers that a new label set replaces: ``fc``, and the auxiliary head's when present."""
        return [self.fc] + ([self.AuxLogits.fc] if self.AuxLogits is not None else [])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and the auxiliary head, if any) for a new label set, drawn as training draws it."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = nn.Linear(768, num_classes)
        for head in self.heads():
            init_new_head(head)


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


HEAD_PREFIXES = ("fc.", "AuxLogits.")


def is_head(parameter_name: str) -> bool:
    """The head: the classifier and the whole auxiliary branch, the layers a fine-tune draws anew for its classes.
    What ``--freeze backbone`` leaves trainable and what the fine-tuning recipe gives its full learning rate."""
    return parameter_name.startswith(HEAD_PREFIXES)


def init_new_head(head: nn.Linear) -> None:
    """A new classifier starts near uniform: weights at std 0.01, zero bias. The TF reference's std 0.1 gives a
    2048-input head logits of std about 3, and a first loss far above log(classes)."""
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _OpCounter(TorchFunctionMode):
    """Counts elementwise work per functional op, so functional ReLUs and pools are seen too."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.batch_norm = 0
        self.relu = 0
        self.pool_inputs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.conv2d:
            weight = args[1]
            self.macs += out.numel() // out.shape[0] * weight[0].numel()
        elif func is F.linear:
            self.macs += out.numel() // out.shape[0] * args[1].shape[1]
        elif func is F.batch_norm:
            self.batch_norm += out.numel() // out.shape[0]
        elif func is F.relu:
            self.relu += out.numel() // out.shape[0]
        elif func in (F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d):
            self.pool_inputs += args[0].numel() // args[0].shape[0]
        return out


def count_flops(model: nn.Module, size: int = 299, convention: str = "torchvision") -> int:
    """FLOPs for one image in either published convention.

    ``torchvision``: conv + fc multiply-adds (5,713,216,096 at 299).
    ``mmpretrain``: mmengine's analyser, which adds 2 per affine BN output, 1 per ReLU output and
    1 per pooled input element (5,745,177,632 at 299, the metafile's number).
    """
    if convention not in ("torchvision", "mmpretrain"):
        raise InputError(f"convention must be 'torchvision' or 'mmpretrain', got {convention!r}")
    was_training = model.training
    counter = _OpCounter()
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
    if convention == "torchvision":
        return counter.macs
    return counter.macs + 2 * counter.batch_norm + counter.relu + counter.pool_inputs
