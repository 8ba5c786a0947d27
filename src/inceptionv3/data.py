"""Labelled image sets, shared by evaluation and training: checked before any image is scored.

Two on-disk layouts, as ImageNet is distributed and as torchvision and mmpretrain read it:

- a folder per class (``root/<class>/**/<image>``), class indices from the sorted folder names;
- a flat folder plus an annotation file of ``filename label`` lines, such as ImageNet's ``val.txt``.

A dataset is a plain list of items (paths, or in-memory images) with integer labels and class names, so
that sets that are not folders at all fit the same type.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .decode import IMAGE_EXTENSIONS, ImageInput, find_images
from .errors import DatasetError
from .weights import imagenet_wnids

_SHOW = 5  # offenders named in an error message


def _first(offenders: Sequence[str], total: int | None = None) -> str:
    total = len(offenders) if total is None else total
    shown = ", ".join(offenders[:_SHOW])
    return shown + (f" (and {total - _SHOW} more)" if total > _SHOW else "")


@dataclass
class ImageDataset:
    """Items with labels. ``names`` identify items in reports (a path, or ``digits.csv.gz#17``)."""

    items: list[ImageInput]
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    names: list[str] = field(default_factory=list)
    skipped_missing: int = 0

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.names:
            self.names = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else f"{self.source}#{n}"
                          for n, i in enumerate(self.items)]
        if not len(self.items) == len(self.labels) == len(self.names):
            raise DatasetError(f"{self.source}: {len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        indices = [int(i) for i in indices]
        return replace(self, items=[self.items[i] for i in indices], labels=self.labels[indices],
                       names=[self.names[i] for i in indices])

    def head(self, limit: int | None) -> ImageDataset:
        """The first ``limit`` items (``--limit``), or the whole set."""
        return self if limit is None or limit >= len(self) else self.subset(range(limit))

    def check_labels(self, num_classes: int) -> None:
        """Every label must index one of ``num_classes`` outputs."""
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if len(bad):
            offenders = [f"{self.names[i]} (label {self.labels[i]})" for i in bad[:_SHOW]]
            raise DatasetError(f"{self.source}: {len(bad)} labels outside 0..{num_classes - 1}: "
                               f"{_first(offenders, len(bad))}")


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """One class name per line, or ``classes.tsv`` (``index<TAB>wnid<TAB>names`` with a header)."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and lines[0].split("\t")[0] == "index":
        return tuple(line.split("\t")[2] for line in lines[1:])
    return tuple(line.strip() for line in lines)


def folder_dataset(root: str | os.PathLike, class_names: Sequence[str] | None = None) -> ImageDataset:
    """``root/<class>/**/<image>``: classes are the sorted folder names (ImageNet's wnids in its train set)."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<image>, or pass --ann FILE)")
    items, labels = [], []
    for label, folder in enumerate(folders):
        found = find_images(root / folder)
        items += [str(p) for p in found]
        labels += [label] * len(found)
    if not items:
        raise DatasetError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    names = tuple(class_names) if class_names is not None else tuple(folders)
    if len(names) != len(folders):
        raise DatasetError(f"{root}: {len(folders)} class folders but {len(names)} class names given")
    return ImageDataset(items, np.array(labels), names, str(root))


def annotation_dataset(ann_file: str | os.PathLike, root: str | os.PathLike | None = None,
                       class_names: Sequence[str] | None = None, skip_missing: bool = False) -> ImageDataset:
    """``filename label`` lines (``val.txt``), file names relative to ``root`` (default: the file's folder)."""
    ann_file = Path(ann_file)
    root = Path(root) if root is not None else ann_file.parent
    malformed, entries = [], []
    for number, line in enumerate(ann_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            malformed.append(f"line {number}: {line.strip()[:60]!r}")
            continue
        entries.append((parts[0].strip(), int(parts[1]), number))
    if malformed:
        raise DatasetError(f"{ann_file}: {len(malformed)} lines are not 'filename label': {_first(malformed)}")
    if not entries:
        raise DatasetError(f"{ann_file}: no entries")
    counts = Counter(name for name, _, _ in entries)
    duplicates = [f"{name} ({count} times)" for name, count in counts.items() if count > 1]
    if duplicates:
        raise DatasetError(f"{ann_file}: {len(duplicates)} files are listed more than once: {_first(duplicates)}")
    missing = [name for name, _, _ in entries if not (root / name).is_file()]
    if missing and not skip_missing:
        raise DatasetError(f"{ann_file}: {len(missing)} of {len(entries)} files are missing under {root}: "
                           f"{_first(missing)} (--skip-missing scores the rest and reports the count)")
    missing_set = set(missing)
    kept = [(name, label) for name, label, _ in entries if name not in missing_set]
    if not kept:
        raise DatasetError(f"{ann_file}: none of its {len(entries)} files exist under {root}")
    labels = np.array([label for _, label in kept])
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    dataset = ImageDataset([str(root / name) for name, _ in kept], labels, tuple(class_names), str(ann_file),
                           skipped_missing=len(missing))
    if np.any(labels < 0) or np.any(labels >= len(class_names)):
        dataset.check_labels(len(class_names))
    return dataset


def digits_dataset(path: str | os.PathLike) -> ImageDataset:
    """UCI optdigits as scikit-learn ships it: 64 pixel columns (0-16) then the label, one digit per row.
    Items are 8 x 8 uint8 grey arrays scaled to 0-255; the preprocessing upsamples them to the model's size."""
    rows = np.loadtxt(gzip.open(path, "rt") if str(path).endswith(".gz") else path, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 65 or rows[:, :64].max() > 16:
        raise DatasetError(f"{path}: expected rows of 64 pixel values (0-16) and a label")
    pixels = np.round(rows[:, :64] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8)
    return ImageDataset(list(pixels), rows[:, 64], tuple(str(d) for d in range(10)), str(path),
                        names=[f"{Path(path).name}#{i}" for i in range(len(rows))])


def omniglot_dataset(path: str | os.PathLike, label_by: str = "alphabet") -> ImageDataset:
    """An Omniglot zip (``<root>/<alphabet>/<character>/<image>.png``), labelled by alphabet or by character.
    The PNGs are small, so their bytes are held in memory."""
    if label_by not in ("alphabet", "character"):
        raise ValueError(f"label_by must be 'alphabet' or 'character', got {label_by!r}")
    members: list[tuple[str, str]] = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = info.filename.strip("/").split("/")
            if info.is_dir() or len(parts) < 4 or not parts[-1].lower().endswith(".png"):
                continue
            key = parts[-3] if label_by == "alphabet" else f"{parts[-3]}/{parts[-2]}"
            members.append((key, info.filename))
        members.sort(key=lambda m: m[1])
        classes = sorted({key for key, _ in members})
        if not classes:
            raise DatasetError(f"{path}: no <alphabet>/<character>/<image>.png members")
        items = [archive.read(name) for _, name in members]
    index = {name: i for i, name in enumerate(classes)}
    return ImageDataset(items, np.array([index[key] for key, _ in members]), tuple(classes), str(path),
                        names=[f"{Path(path).name}#{name}" for _, name in members])


def split_dataset(dataset: ImageDataset, fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """A held-out split: ``fraction`` of each class (at least one image where a class has two or more), chosen
    by ``seed``, so that every class is in both parts and the split is the same on every run and rank."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(dataset.labels):
        members = np.flatnonzero(dataset.labels == label)
        count = int(round(len(members) * fraction))
        count = min(max(count, 1 if len(members) > 1 else 0), len(members) - 1)
        held.extend(rng.permutation(members)[:count].tolist())
    held_set = set(held)
    kept = [i for i in range(len(dataset)) if i not in held_set]
    return dataset.subset(kept), dataset.subset(sorted(held))


def load_dataset(data: str | os.PathLike, ann: str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None, skip_missing: bool = False,
                 label_by: str = "alphabet") -> ImageDataset:
    """``--data PATH [--ann FILE]``: an annotation file (with PATH as the image root), class folders, the
    digits ``.csv.gz`` or an Omniglot ``.zip`` (labelled by ``label_by``)."""
    data = Path(data)
    name = data.name.lower()
    if data.is_file() and (name.endswith(".csv.gz") or name.endswith(".csv")):
        return digits_dataset(data)
    if data.is_file() and name.endswith(".zip"):
        return omniglot_dataset(data, label_by)
    if ann is not None:
        return annotation_dataset(ann, data, class_names, skip_missing)
    if data.is_file():
        return annotation_dataset(data, None, class_names, skip_missing)
    if not data.is_dir():
        raise DatasetError(f"{data}: no such folder or annotation file")
    return folder_dataset(data, class_names)


def align_to_model(dataset: ImageDataset, model_classes: Sequence[str] | None, num_classes: int) -> ImageDataset:
    """Re-express labels as the model's output indices.

    Class folders named like the model's classes (or ImageNet wnids, for a 1000-class model) are matched by
    name, so a folder holding only some classes still scores against the right outputs. Otherwise labels
    are taken as output indices, as torchvision's ``ImageFolder`` does, and must be in range.
    """
    names = list(dataset.class_names)
    lookup: dict[str, int] | None = None
    if model_classes is not None and set(names) <= set(model_classes) and list(model_classes) != names:
        lookup = {name: i for i, name in enumerate(model_classes)}
    elif num_classes == 1000 and set(names) <= set(imagenet_wnids()) and len(names) < 1000:
        lookup = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    if lookup is not None:
        remap = np.array([lookup[name] for name in names])
        aligned = replace(dataset, labels=remap[dataset.labels])
    else:
        aligned = replace(dataset)
    aligned.class_names = tuple(model_classes) if model_classes is not None else tuple(
        names + [str(i) for i in range(len(names), num_classes)])
    aligned.check_labels(num_classes)
    return aligned


_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")


def real_labels_for(dataset: ImageDataset, path: str | os.PathLike) -> list[list[int]]:
    """ImageNet-ReaL labels (Beyer et al. 2020) for each item, found by its val image number.

    ``real_labels.json`` is a list of 50,000 lists, in val order; an empty list means the raters found no
    valid label, and such images are left out of ReaL accuracy, as in the paper.
    """
    table = json.loads(Path(path).read_text())
    if not isinstance(table, list) or not all(isinstance(entry, list) for entry in table):
        raise DatasetError(f"{path}: expected a JSON list of label lists (real_labels.json)")
    out, unmatched = [], []
    for name in dataset.names:
        match = _VAL_NUMBER.search(Path(name).name)
        if match is None or not 1 <= int(match.group(1)) <= len(table):
            unmatched.append(name)
            continue
        out.append([int(label) for label in table[int(match.group(1)) - 1]])
    if unmatched:
        raise DatasetError(f"{path}: {len(unmatched)} images have no ILSVRC2012_val_######## number within the "
                           f"table's {len(table)} entries: {_first(unmatched)}")
    return out
