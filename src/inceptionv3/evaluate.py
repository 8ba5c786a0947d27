"""Score a labelled dataset: top-1/top-5, per-class and macro metrics, ReaL, multi-crop and ensembles, on one
process or many, with every sample counted exactly once.

Distributed runs split the dataset by whole batches (batch k goes to rank k mod N) rather than by sample,
so each batch holds exactly the images it holds in a single-process run: the scores are then bit-identical,
not merely close, and nothing is padded or dropped. Rank 0 gathers the results, puts them back in dataset
order and checks that every index arrived once.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.distributed as dist

from .data import ImageDataset, align_to_model, real_labels_for
from .errors import InputError
from .files import SafeCSVWriter, file_digest
from .inference import Classifier, Prediction, top_classes
from .runtime import rank_world, shard
from .version import versions
from .weights import DEFAULT_MODEL

TOPK = 5


@dataclass
class Scores:
    """Per-image results in dataset order. ``topk`` holds output indices, best first."""

    labels: np.ndarray
    topk: np.ndarray
    topk_scores: np.ndarray
    names: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), left out of the metrics


def _ensemble(members: Sequence[Classifier], items: list, names: list[str]) -> Iterator[Prediction]:
    """Average the softmax of several models, each with its own preprocessing, image by image."""
    streams = [member.predict(items) for member in members]
    for index, group in enumerate(zip(*streams, strict=True)):
        failed = [p for p in group if not p.ok]
        if failed:
            yield Prediction(index, names[index], error=failed[0].error, error_kind=failed[0].error_kind)
            continue
        scores = np.mean([p.scores for p in group], axis=0)
        yield Prediction(index, names[index], scores=scores, label=int(scores.argmax()),
                         score=float(scores.max()))


def score(members: Sequence[Classifier], dataset: ImageDataset, progress: bool = True) -> Scores | None:
    """Run every image through the model (or the ensemble's models). Under ``torchrun`` each rank scores its
    share and rank 0 returns the whole, in order; other ranks return ``None``."""
    from tqdm import tqdm

    rank, world = rank_world()
    chunk = members[0].images_per_chunk()
    mine = shard(len(dataset), chunk, rank, world)
    items = [dataset.items[i] for i in mine]
    names = [dataset.names[i] for i in mine]
    k = min(TOPK, members[0].model.num_classes)
    topk = np.full((len(mine), k), -1, np.int64)
    topk_scores = np.zeros((len(mine), k), np.float32)
    ok = np.zeros(len(mine), bool)
    failed: list[tuple[int, str]] = []
    stream = members[0].predict(items) if len(members) == 1 else _ensemble(members, items, names)
    bar = tqdm(total=len(dataset), unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
    correct = seen = 0
    for local, prediction in enumerate(stream):
        if prediction.ok:
            order = top_classes(prediction.scores, k)
            topk[local], topk_scores[local], ok[local] = order, prediction.scores[order], True
            seen += 1
            correct += int(order[0] == dataset.labels[mine[local]])
        else:
            failed.append((mine[local], prediction.error))
        bar.update(world)  # every rank moves at about the same pace
        if seen:
            bar.set_postfix_str(f"top-1 {100 * correct / seen:.2f}%", refresh=False)
    bar.close()

    part = (np.array(mine, np.int64), topk, topk_scores, ok, failed)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, part)
        if rank != 0:
            return None
    else:
        parts = [part]
    index = np.concatenate([p[0] for p in parts])
    if len(index) != len(dataset) or not np.array_equal(np.sort(index), np.arange(len(dataset))):
        raise RuntimeError(f"gathered {len(index)} results for {len(dataset)} images: the shards overlap or miss")
    order = np.argsort(index)
    all_ok = np.concatenate([p[3] for p in parts])[order]
    failed_all = sorted(f for p in parts for f in p[4])
    return Scores(
        labels=dataset.labels[all_ok],
        topk=np.concatenate([p[1] for p in parts])[order][all_ok],
        topk_scores=np.concatenate([p[2] for p in parts])[order][all_ok],
        names=[n for n, good in zip(dataset.names, all_ok, strict=True) if good],
        failed=[(dataset.names[i], reason) for i, reason in failed_all],
    )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    counts = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def accuracy_metrics(scores: Scores, num_classes: int, real: list[list[int]] | None = None) -> tuple[dict, np.ndarray]:
    """top-1/top-5 in percent, per-class accuracy, and precision, recall and F1 averaged over the classes
    that occur in the labels or the predictions (scikit-learn's ``average='macro'``, 0 where undefined)."""
    labels, predicted = scores.labels, scores.topk[:, 0]
    count = len(labels)
    matrix = confusion_matrix(labels, predicted, num_classes)
    true_counts, predicted_counts, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true_counts > 0, hits / np.maximum(true_counts, 1), 0.0)
        precision = np.where(predicted_counts > 0, hits / np.maximum(predicted_counts, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (true_counts > 0) | (predicted_counts > 0)
    result = {
        "top1": 100.0 * float(np.mean(predicted == labels)) if count else 0.0,
        "top5": 100.0 * float(np.mean(np.any(scores.topk == labels[:, None], axis=1))) if count else 0.0,
        "count": count,
        "macro_precision": 100.0 * float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": 100.0 * float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": 100.0 * float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": [100.0 * float(r) if n else None for r, n in zip(recall, true_counts, strict=True)],
        "per_class_count": true_counts.tolist(),
    }
    if real is not None:
        judged = [i for i, labels_i in enumerate(real) if labels_i]
        hits_real = sum(int(predicted[i]) in real[i] for i in judged)
        result["real_top1"] = 100.0 * hits_real / len(judged) if judged else 0.0
        result["real_count"] = len(judged)
    return result, matrix


def _open_csv(path: str | os.PathLike):
    """UTF-8 text, written through ``SafeCSVWriter``: non-UTF-8 names escaped, formula-like cells neutralised."""
    return open(path, "w", newline="", encoding="utf-8")


def write_confusion_csv(path: str | os.PathLike, matrix: np.ndarray, class_names: Sequence[str]) -> None:
    """A dense matrix: the header row and first column name the classes (rows true, columns predicted)."""
    with _open_csv(path) as handle:
        writer = SafeCSVWriter(handle)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix, strict=True):
            writer.writerow([name, *row.tolist()])


def write_predictions_csv(path: str | os.PathLike, scores: Scores, class_names: Sequence[str]) -> None:
    k = scores.topk.shape[1]
    with _open_csv(path) as handle:
        writer = SafeCSVWriter(handle)
        writer.writerow(["path", "label", "correct", *[f"top{r}_{c}" for r in range(1, k + 1)
                                                         for c in ("label", "class", "score")]])
        for name, label, top, top_scores in zip(scores.names, scores.labels, scores.topk, scores.topk_scores,
                                                strict=True):
            cells = [v for t, s in zip(top, top_scores, strict=True) for v in (int(t), class_names[t], f"{s:.6f}")]
            writer.writerow([name, int(label), int(top[0] == label), *cells])


@dataclass
class EvalConfig:
    """What ``inceptionv3 test`` was asked to do; recorded in the report so that the run can be repeated."""

    data: str
    ann: str | None = None
    models: tuple[str, ...] = (DEFAULT_MODEL,)  # as requested: zoo names or files
    batch_size: int = 32
    limit: int | None = None
    crops: int = 1
    real_labels: str | None = None


def _describe_member(member: Classifier, requested: str) -> dict:
    info = getattr(member.model, "weights_info", None)
    path = info.path if info is not None else None
    return {
        "model": requested,
        "zoo_entry": info.name if info is not None else None,
        "weights": path,
        "weights_sha256": file_digest(path) if path and Path(path).is_file() else None,
        "source": info.source if info is not None else None,
        "preprocessing": member.preprocess.describe(),
        "backend": member.backend,
        "precision": member.precision,
    }


def evaluate(members: Sequence[Classifier], dataset: ImageDataset, config: EvalConfig,
             progress: bool = True) -> tuple[dict, Scores, np.ndarray] | None:
    """Score ``dataset`` and build the report. Rank 0 gets (report, scores, confusion matrix); others None."""
    first = members[0]
    num_classes = first.model.num_classes
    for member in members[1:]:
        if member.model.num_classes != num_classes:
            raise InputError(f"ensemble members disagree on the number of classes ({num_classes} vs "
                             f"{member.model.num_classes})")
    dataset = align_to_model(dataset, first.class_names, num_classes)
    start = time.perf_counter()
    scores = score(members, dataset, progress)
    wall = time.perf_counter() - start
    if scores is None:
        return None
    real = None
    if config.real_labels:
        by_name = dict(zip(dataset.names, real_labels_for(dataset, config.real_labels), strict=True))
        real = [by_name[name] for name in scores.names]
    result, matrix = accuracy_metrics(scores, num_classes, real)
    world = rank_world()[1]
    report = {
        "top1": result["top1"],
        "top5": result["top5"],
        **({"real_top1": result["real_top1"]} if real is not None else {}),
        "metrics": result,
        "models": [_describe_member(m, r) for m, r in zip(members, config.models, strict=True)],
        "crops": config.crops,
        "data": {"path": config.data, "ann": config.ann, "images": len(dataset), "scored": len(scores.labels),
                 "failed": [{"path": n, "error": e} for n, e in scores.failed],
                 "skipped_missing": dataset.skipped_missing, "limit": config.limit,
                 "real_labels": config.real_labels},
        "class_names": list(dataset.class_names),
        "batch_size": config.batch_size,
        "processes": world,
        "device": str(first.device),
        "wall_time_s": wall,
        "images_per_s": len(dataset) / wall if wall > 0 else None,
        "versions": versions(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return report, scores, matrix


def write_report(path: str | os.PathLike, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
