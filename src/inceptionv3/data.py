"""Labelled image sets, shared by evaluation and training: checked before any image is scored.

Two on-disk layouts, as ImageNet is distributed and as torchvision and mmpretrain read it:

- a folder per class (``root/<class>/**/<image>``), each folder matched to the model's class of that name or
  wnid (``match_classes``), or, when asked, labelled by its place among the sorted folders;
- a flat folder plus an annotation file of ``filename label`` lines, such as ImageNet's ``val.txt``.

A dataset is a plain list of items (paths, or in-memory images) with integer labels and class names, so
that sets that are not folders at all fit the same type.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DatasetError, InputError
from .files import IMAGE_EXTENSIONS, FileReadError, display_name, find_images, open_regular, read_at_most, read_file
from .imagenet import imagenet_wnids

_SHOW = 5  # offenders named in an error message

# Bounds on what a data file may make us hold in memory, each far above the real sets (measured on the shared
# data: digits.csv.gz inflates to 264,712 bytes; the Omniglot zips hold 656,309 and 798,023 bytes of PNGs, the
# largest member 419 bytes) and far below what would exhaust a machine.
#: Text files: annotation lists (ImageNet's val.txt is 1.6 MB), class lists, real_labels.json.
MAX_TEXT_BYTES = 256 * 1024**2
#: A digits CSV once decompressed: 250 times the real one.
MAX_CSV_BYTES = 64 * 1024**2
#: One member of an Omniglot zip, and all the members read from one zip together.
MAX_MEMBER_BYTES = 16 * 1024**2
MAX_ARCHIVE_BYTES = 512 * 1024**2
#: The label bound of an annotation file when no class list or class count says better.
MAX_LABEL = 1_000_000


def _first(offenders: Sequence[str], total: int | None = None) -> str:
    total = len(offenders) if total is None else total
    shown = ", ".join(display_name(o) for o in offenders[:_SHOW])
    return shown + (f" (and {total - _SHOW} more)" if total > _SHOW else "")


def _read_data_file(path: str | os.PathLike, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """A data file's bytes, refused as a ``DatasetError`` (not a FIFO, device, or over ``max_bytes``)."""
    try:
        return read_file(path, max_bytes, what="a data file")
    except FileReadError as exc:
        raise DatasetError(str(exc)) from None


def _open_data_file(path: str | os.PathLike, max_bytes: int):
    """``open_regular`` for data files: a FIFO or device is a ``DatasetError`` before it can block us."""
    try:
        return open_regular(path, max_bytes, what="a data file")
    except FileReadError as exc:
        raise DatasetError(str(exc)) from None


def _read_text(path: str | os.PathLike) -> str:
    """UTF-8 text; undecodable bytes survive as surrogates, as in ``os.listdir``, so non-UTF-8 file names
    listed in an annotation file still name their files."""
    return _read_data_file(path).decode("utf-8", "surrogateescape")


@dataclass
class ImageDataset:
    """Items with labels. ``names`` identify items in reports (a path, or ``digits.csv.gz#17``).

    ``by_name`` says what a label means: True when it numbers ``class_names`` as the data named its classes
    (class folders, Omniglot alphabets, digits), which ``align_to_model`` then matches to the model's classes by
    name; False when it is already the model's output index (an annotation file, or labels built from a class
    list or folder order)."""

    items: list  # paths, encoded bytes or arrays: whatever decode.load_image takes
    labels: np.ndarray
    class_names: tuple[str, ...]
    origin: str
    """Where the items came from (a folder, an annotation file, an archive), for messages."""
    names: list[str] = field(default_factory=list)
    skipped_missing: int = 0
    by_name: bool = False

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.names:
            self.names = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else f"{self.origin}#{n}"
                          for n, i in enumerate(self.items)]
        if not len(self.items) == len(self.labels) == len(self.names):
            raise DatasetError(f"{display_name(self.origin)}: {len(self.items)} items but {len(self.labels)} labels")

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
            raise DatasetError(f"{display_name(self.origin)}: {len(bad)} labels outside 0..{num_classes - 1}: "
                               f"{_first(offenders, len(bad))}")


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """One class name per line, or ``classes.tsv`` (``index<TAB>wnid<TAB>names`` with a header)."""
    try:
        text = _read_data_file(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{display_name(path)}: not UTF-8 text (byte {exc.start})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].split("\t")[0] == "index":
        short = [n for n, line in enumerate(lines[1:], start=2) if len(line.split("\t")) < 3]
        if short:
            raise DatasetError(f"{display_name(path)}: lines {short[:_SHOW]} lack the index, wnid and names columns")
        return tuple(line.split("\t")[2] for line in lines[1:])
    return tuple(line.strip() for line in lines)


# --- matching class names --------------------------------------------------------------------------------------


def _key(name: str) -> str:
    """Names compare without case, and with '_', '-' and runs of spaces all alike ('Great_White-shark')."""
    return " ".join(re.sub(r"[_\-]", " ", name).casefold().split())


def match_classes(names: Sequence[str], classes: Sequence[str],
                  wnids: Sequence[str] | None = None) -> tuple[list[int | None], list[str]]:
    """The index in ``classes`` of each of ``names`` (None where there is none), and why each None is one.

    A name matches a class through its wnid (``n02130308``), its whole name, or any of its comma-separated names
    (ImageNet's 'cougar, puma, catamount, ...'), compared by ``_key``. When several classes carry the name, the
    one whose main (first) name it is wins ('harp' is class 594 'harp', not 593 'harmonica, ..., harp'); if
    that still leaves several ('crane' the bird and 'crane' the machine, 'maillot' and 'maillot, tank suit')
    the name is ambiguous and left unmatched, never guessed: the wnid names such a class."""
    candidates: dict[str, set[int]] = defaultdict(set)
    main: dict[str, set[int]] = defaultdict(set)
    for index, full in enumerate(classes):
        synonyms = [part for part in full.split(",") if part.strip()] or [full]
        for key in {_key(full), *map(_key, synonyms)} - {""}:
            candidates[key].add(index)
        main[_key(full)].add(index)
        main[_key(synonyms[0])].add(index)
    by_wnid = {wnid.casefold(): i for i, wnid in enumerate(wnids or ())}
    matched: list[int | None] = []
    problems: list[str] = []
    for name in names:
        key = _key(name)
        found = {by_wnid[key]} if key in by_wnid else candidates.get(key, set())
        if len(found) > 1:
            found = (found & main[key]) or found
        if len(found) == 1:
            matched.append(next(iter(found)))
            continue
        matched.append(None)
        if not found:
            problems.append(f"{name} (no such class)")
        else:
            which = "; ".join(f"{i} {classes[i]!r}" + (f" = {wnids[i]}" if wnids else "") for i in sorted(found)[:3])
            problems.append(f"{name} (ambiguous: {which}{'; ...' if len(found) > 3 else ''})")
    return matched, problems


def _wnids_for(classes: Sequence[str]) -> tuple[str, ...] | None:
    """ImageNet wnids name the classes of a 1000-class list, whatever its names."""
    return imagenet_wnids() if len(classes) == 1000 else None


_BY_ORDER = "--label-by-folder-order to take the sorted folders as outputs 0, 1, 2, ..."
_CLASSES = "--classes FILE (the model's class names in output order, one per line)"


def _match_or_raise(origin: str, names: Sequence[str], classes: Sequence[str], against: str,
                    hint: str) -> np.ndarray:
    matched, problems = match_classes(names, classes, _wnids_for(classes))
    if problems:
        raise DatasetError(f"{display_name(origin)}: {len(problems)} of {len(names)} classes match none of "
                           f"{against}: {_first(problems)}; name each by its class's wnid or name, or pass {hint}")
    return np.array(matched, dtype=np.int64)


# --- datasets --------------------------------------------------------------------------------------------------


def folder_dataset(root: str | os.PathLike, class_names: Sequence[str] | None = None, *,
                   label_by_folder_order: bool = False) -> ImageDataset:
    """``root/<class>/**/<image>``, one folder per class.

    By default the folders keep their names and are matched to the model's classes later (``align_to_model``).
    ``class_names`` (``--classes``: the model's classes in output order) matches them now instead.
    ``label_by_folder_order`` makes the sorted folders outputs 0, 1, 2, ... whatever their names, as
    torchvision's ``ImageFolder`` does; ``class_names`` then only names those outputs."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetError(f"{display_name(root)}: no class folders (expected {display_name(root)}/<class>/<image>, "
                           "or pass --ann FILE)")
    items, positions = [], []
    for position, folder in enumerate(folders):
        found = find_images(root / folder)
        items += [str(p) for p in found]
        positions += [position] * len(found)
    if not items:
        raise DatasetError(f"{display_name(root)}: the class folders hold no images "
                           f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    positions = np.array(positions, dtype=np.int64)
    if label_by_folder_order:
        names = tuple(class_names) if class_names is not None else tuple(folders)
        if len(names) < len(folders):
            raise DatasetError(f"{display_name(root)}: {len(folders)} class folders but {len(names)} class names given")
        return ImageDataset(items, positions, names, str(root))
    if class_names is not None:
        outputs = _match_or_raise(str(root), folders, class_names, f"the {len(class_names)} classes given", _BY_ORDER)
        return ImageDataset(items, outputs[positions], tuple(class_names), str(root))
    return ImageDataset(items, positions, tuple(folders), str(root), by_name=True)


def _parse_label(text: str, bound: int) -> int | None:
    """The label, or None when it is outside 0..bound-1. Long digit strings are refused by length before
    ``int()`` sees them, which would choke on (and allocate for) thousands of digits."""
    significant = text.lstrip("-").lstrip("0") or "0"
    if len(significant) > len(str(bound)):
        return None
    label = int(significant)
    return label if label < bound and not (text.startswith("-") and label) else None


def annotation_dataset(ann_file: str | os.PathLike, root: str | os.PathLike | None = None,
                       class_names: Sequence[str] | None = None, skip_missing: bool = False, *,
                       num_classes: int | None = None) -> ImageDataset:
    """``filename label`` lines (``val.txt``), file names relative to ``root`` (default: the file's folder).

    Labels must lie in 0..N-1, N being the number of ``class_names``, else ``num_classes`` (the model's), else
    ``MAX_LABEL``: checked line by line before anything is sized by them, so ``a.jpg 99999999999`` is an
    error, not an attempt to name 10^11 classes."""
    ann_file = Path(ann_file)
    shown = display_name(ann_file)
    root = Path(root) if root is not None else ann_file.parent
    bound = len(class_names) if class_names is not None else num_classes if num_classes is not None else MAX_LABEL
    malformed, outside, entries = [], [], []
    for number, line in enumerate(_read_text(ann_file).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            malformed.append(f"line {number}: {line.strip()[:60]!r}")
            continue
        label = _parse_label(parts[1], bound)
        if label is None:
            outside.append(f"line {number}: {parts[0].strip()} (label {parts[1][:20]}"
                           f"{'...' if len(parts[1]) > 20 else ''})")
            continue
        entries.append((parts[0].strip(), label, number))
    if malformed:
        raise DatasetError(f"{shown}: {len(malformed)} lines are not 'filename label': {_first(malformed)}")
    if outside:
        why = ("" if class_names is not None or num_classes is not None else
               f" (no class list given, so labels are bounded by {MAX_LABEL:,}; pass --classes FILE)")
        raise DatasetError(f"{shown}: {len(outside)} labels outside 0..{bound - 1}{why}: {_first(outside)}")
    if not entries:
        raise DatasetError(f"{shown}: no entries")
    counts = Counter(name for name, _, _ in entries)
    duplicates = [f"{name} ({count} times)" for name, count in counts.items() if count > 1]
    if duplicates:
        raise DatasetError(f"{shown}: {len(duplicates)} files are listed more than once: {_first(duplicates)}")
    missing = [name for name, _, _ in entries if not (root / name).is_file()]
    if missing and not skip_missing:
        raise DatasetError(f"{shown}: {len(missing)} of {len(entries)} files are missing under "
                           f"{display_name(root)}: {_first(missing)} (--skip-missing scores the rest and reports "
                           "the count)")
    missing_set = set(missing)
    kept = [(name, label) for name, label, _ in entries if name not in missing_set]
    if not kept:
        raise DatasetError(f"{shown}: none of its {len(entries)} files exist under {display_name(root)}")
    labels = np.array([label for _, label in kept])
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    return ImageDataset([str(root / name) for name, _ in kept], labels, tuple(class_names), str(ann_file),
                        skipped_missing=len(missing))


def _inflate(path: str | os.PathLike, limit: int) -> bytes:
    """A gzip file's content, read in bounded chunks: more than ``limit`` bytes is refused, never held."""
    with _open_data_file(path, MAX_TEXT_BYTES) as handle, gzip.GzipFile(fileobj=handle) as stream:
        try:
            data = read_at_most(stream, limit)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{display_name(path)}: not a readable gzip file ({exc})") from None
    if data is None:
        raise DatasetError(f"{display_name(path)}: decompresses to more than {limit:,} bytes, the limit for a digits "
                           "CSV (a decompression bomb?)")
    return data


def digits_dataset(path: str | os.PathLike, max_bytes: int = MAX_CSV_BYTES) -> ImageDataset:
    """UCI optdigits as scikit-learn ships it: 64 pixel columns (0-16) then the label, one digit per row.
    Items are 8 x 8 uint8 grey arrays scaled to 0-255; the preprocessing upsamples them to the model's size.
    The CSV may be at most ``max_bytes`` once decompressed."""
    shown = display_name(path)
    data = _inflate(path, max_bytes) if str(path).endswith(".gz") else _read_data_file(path, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the check below says it
            rows = np.loadtxt(io.StringIO(data.decode("utf-8", "replace")), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{shown}: not a CSV of integers ({str(exc).splitlines()[0]})") from None
    if (rows.shape[1:] != (65,) or len(rows) == 0 or rows[:, :64].min() < 0 or rows[:, :64].max() > 16
            or rows[:, 64].min() < 0 or rows[:, 64].max() > 9):
        raise DatasetError(f"{shown}: expected rows of 64 pixel values (0-16) and a label (0-9)")
    pixels = np.round(rows[:, :64] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8)
    return ImageDataset(list(pixels), rows[:, 64], tuple(str(d) for d in range(10)), str(path),
                        names=[f"{Path(path).name}#{i}" for i in range(len(rows))], by_name=True)


def omniglot_dataset(path: str | os.PathLike, label_by: str = "alphabet", max_member_bytes: int = MAX_MEMBER_BYTES,
                     max_total_bytes: int = MAX_ARCHIVE_BYTES) -> ImageDataset:
    """An Omniglot zip (``<root>/<alphabet>/<character>/<image>.png``), labelled by alphabet or by character.

    The PNGs are small, so their bytes are held in memory: at most ``max_member_bytes`` each and
    ``max_total_bytes`` in all, checked against the sizes the zip declares and again while inflating, since a
    zip bomb may declare anything."""
    if label_by not in ("alphabet", "character"):
        raise InputError(f"label_by must be 'alphabet' or 'character', got {label_by!r}")
    shown = display_name(path)
    members: list[tuple[str, zipfile.ZipInfo]] = []
    with _open_data_file(path, 1 << 62) as handle:  # the archive may be any size: what it inflates to is bounded
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DatasetError(f"{shown}: not a readable zip file ({exc})") from None
        with archive:
            for info in archive.infolist():
                parts = info.filename.strip("/").split("/")
                if info.is_dir() or len(parts) < 4 or not parts[-1].lower().endswith(".png"):
                    continue
                key = parts[-3] if label_by == "alphabet" else f"{parts[-3]}/{parts[-2]}"
                members.append((key, info))
            members.sort(key=lambda m: m[1].filename)
            classes = sorted({key for key, _ in members})
            if not classes:
                raise DatasetError(f"{shown}: no <alphabet>/<character>/<image>.png members")
            declared = sum(info.file_size for _, info in members)
            if declared > max_total_bytes:
                raise DatasetError(f"{shown}: its {len(members)} images would inflate to {declared:,} bytes, over "
                                   f"the {max_total_bytes:,}-byte limit (a zip bomb?)")
            items = []
            total = 0
            for _, info in members:
                data = _read_member(archive, info, shown, max_member_bytes)
                total += len(data)
                if total > max_total_bytes:
                    raise DatasetError(f"{shown}: its images inflate to more than {max_total_bytes:,} bytes, the "
                                       "limit (a zip bomb?)")
                items.append(data)
    index = {name: i for i, name in enumerate(classes)}
    return ImageDataset(items, np.array([index[key] for key, _ in members]), tuple(classes), str(path),
                        names=[f"{Path(path).name}#{info.filename}" for _, info in members], by_name=True)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str, limit: int) -> bytes:
    """One member's bytes, at most ``limit`` of them whatever its header says."""
    where = f"{shown}: member {display_name(info.filename)}"
    if info.file_size > limit:
        raise DatasetError(f"{where} declares {info.file_size:,} bytes, over the {limit:,}-byte limit for one "
                           "image (a zip bomb?)")
    try:
        with archive.open(info) as member:
            data = read_at_most(member, limit)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise DatasetError(f"{where}: cannot be read ({exc})") from None
    if data is None:
        raise DatasetError(f"{where} inflates to more than {limit:,} bytes, the limit for one image (a zip bomb?)")
    return data


def split_dataset(dataset: ImageDataset, fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """A held-out split: ``fraction`` of each class (at least one image where a class has two or more), chosen
    by ``seed``, so that every class is in both parts and the split is the same on every run and rank."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"the validation fraction must be between 0 and 1, got {fraction}")
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
                 label_by: str = "alphabet", *, label_by_folder_order: bool = False,
                 num_classes: int | None = None) -> ImageDataset:
    """``--data PATH [--ann FILE]``: an annotation file (with PATH as the image root), class folders, the
    digits ``.csv.gz`` or an Omniglot ``.zip`` (labelled by ``label_by``).

    ``class_names`` (``--classes``) are the model's classes in output order; ``label_by_folder_order``
    (``--label-by-folder-order``) takes sorted class folders as outputs 0, 1, 2, ...; ``num_classes`` (the
    model's) bounds an annotation file's labels when no class list is given."""
    data = Path(data)
    name = data.name.lower()
    if data.is_file() and (name.endswith(".csv.gz") or name.endswith(".csv")):
        return digits_dataset(data)
    if data.is_file() and name.endswith(".zip"):
        return omniglot_dataset(data, label_by)
    if ann is not None:
        return annotation_dataset(ann, data, class_names, skip_missing, num_classes=num_classes)
    if data.is_file():
        return annotation_dataset(data, None, class_names, skip_missing, num_classes=num_classes)
    if not data.is_dir():
        if os.path.lexists(data):  # a FIFO, a device, a dangling symlink: say which, without opening it
            _read_data_file(data)
        raise DatasetError(f"{display_name(data)}: no such folder or annotation file")
    return folder_dataset(data, class_names, label_by_folder_order=label_by_folder_order)


def align_to_model(dataset: ImageDataset, model_classes: Sequence[str] | None, num_classes: int) -> ImageDataset:
    """Re-express labels as the model's output indices.

    Classes the data named itself (``by_name``: class folders, Omniglot, digits) are matched to the model's
    classes by name (see ``match_classes``; ImageNet wnids too, for a 1000-class model), so a folder holding a
    few classes still scores against the right outputs. A name that matches no class, or several, is an error
    naming it: taking such folders in sorted order would score 'cheetah' as class 0, 'tench'. Other labels are
    output indices already and must be in range.
    """
    names = list(dataset.class_names)
    if dataset.by_name:
        if model_classes is None and num_classes != 1000:
            raise DatasetError(f"{display_name(dataset.origin)}: the model has no class names to match the data's "
                               f"{len(names)} classes against; pass {_CLASSES}, or {_BY_ORDER}")
        classes = list(model_classes) if model_classes is not None else [""] * num_classes
        remap = _match_or_raise(dataset.origin, names, classes, f"the model's {num_classes} classes",
                                f"{_CLASSES}, or {_BY_ORDER}")
        aligned = replace(dataset, labels=remap[dataset.labels], by_name=False)
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
    try:
        table = json.loads(_read_data_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{display_name(path)}: not JSON ({exc})") from None
    if not isinstance(table, list) or not all(isinstance(entry, list) and all(type(label) is int for label in entry)
                                              for entry in table):
        raise DatasetError(f"{display_name(path)}: expected a JSON list of label lists (real_labels.json)")
    out, unmatched = [], []
    for name in dataset.names:
        match = _VAL_NUMBER.search(Path(name).name)
        if match is None or not 1 <= int(match.group(1)) <= len(table):
            unmatched.append(name)
            continue
        out.append([int(label) for label in table[int(match.group(1)) - 1]])
    if unmatched:
        raise DatasetError(f"{display_name(path)}: {len(unmatched)} images have no ILSVRC2012_val_######## number "
                           f"within the table's {len(table)} entries: {_first(unmatched)}")
    return out
