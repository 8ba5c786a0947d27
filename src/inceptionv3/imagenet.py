"""ImageNet-1k facts: the class names and WordNet ids in index order, and the channel statistics."""

from __future__ import annotations

from functools import cache
from importlib import resources

#: The ImageNet training set's RGB channel mean and standard deviation, on the 0-1 scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@cache
def imagenet_classes() -> tuple[str, ...]:
    """mmpretrain's ImageNet-1k names in index order, e.g. ``'tench, Tinca tinca'``."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet ids in the same order (``n01440764`` first): the folder names of ImageNet's own layout."""
    text = resources.files(__package__).joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(text.split())


__all__ = ["MEAN", "STD", "imagenet_classes", "imagenet_wnids"]
