"""The ``inceptionv3`` command: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoints import SOURCES, read_checkpoint, save_canonical
from .errors import InceptionV3Error, InputError
from .explain import METHODS as EXPLAIN_METHODS
from .files import SafeCSVWriter, display_name
from .options import add_flags, config_from
from .runtime import init_distributed, is_main_process, rank_world, shard
from .version import __version__
from .weights import DEFAULT_MODEL, resolve_model


def _cmd_list(args: argparse.Namespace) -> int:
    from .weights import ZOO, list_models

    for name in list_models(args.pattern):
        entry = ZOO[name]
        top1 = f"top-1 {entry.accuracy[0].top1:6.3f}" if entry.accuracy else "top-1    n/a"  # the FID network
        print(f"{name:36s} {entry.source:12s} {top1}  {entry.preprocess.name}")
    return 0


def model_card(name: str) -> str:
    from .files import cache_dir
    from .weights import get_entry

    entry = get_entry(name)
    cached = entry.cached_file()
    lines = [
        f"{entry.name}",
        f"  params        {entry.params:,}" + (" (27,161,264 with the auxiliary head)" if entry.num_classes == 1000
                                                    else f" ({entry.num_classes} classes)"),
        f"  FLOPs         {entry.macs / 1e9:.3f} G conv+fc multiply-adds (torchvision's count)",
        f"                {entry.flops_mmpretrain / 1e9:.3f} G adding BN, ReLU and pooling (mmpretrain's count)",
        f"  input         3 x {entry.preprocess.crop} x {entry.preprocess.crop}, RGB",
        f"  preprocessing {entry.preprocess.describe()}",
        f"                ({entry.preprocess.source_note})",
        "  metrics       " + ("\n                ".join(
            f"top-1 {m.top1:.3f}  top-5 {m.top5:.3f}  ({m.measured_by})" for m in entry.accuracy
        ) or "none published"),
        f"  source        {entry.source}",
        "  files         " + "\n                ".join(
            f"{f.url}  [{f.hash or 'no published hash'}]" + ("  (transform_input folded)" if f.transform_input else "")
            for f in entry.files
        ),
        f"  licence       {entry.license}",
        "  origin        " + "\n                ".join(entry.origin),
        f"  cache         {cached if cached else 'not downloaded'} (cache dir {cache_dir()})",
    ]
    if entry.notes:
        lines.append(f"  notes         {entry.notes}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    print(model_card(args.name))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .weights import add_to_cache, download_weights, get_entry

    if args.from_file:  # no network: a copy brought by hand, checked against the entry's hashes
        path, weight_file = add_to_cache(get_entry(args.name), args.from_file)
        print(f"{args.name}: {path} (from {display_name(args.from_file)}, hash checked)")
        return 0
    path, weight_file = download_weights(get_entry(args.name), timeout=args.timeout, deadline=args.deadline,
                                         min_rate=args.min_rate)
    print(f"{args.name}: {path} ({weight_file.url})")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    """Downloads and compiled exports (about 100 MB each) accumulate; this shows them and frees the space."""
    import shutil

    from .files import cache_dir

    root = cache_dir()
    entries = sorted([*root.glob("*"), *(root / "compiled").glob("*")]) if root.is_dir() else []
    entries = [e for e in entries if e.name != "compiled" and not e.name.endswith(".lock")]
    total = freed = 0
    for entry in entries:
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        total += size
        remove = args.clear == "all" or (args.clear == "compiled" and entry.parent.name == "compiled")
        print(f"{size / 1e6:9.1f} MB  {entry}{'  (removed)' if remove else ''}")
        if remove:
            freed += size
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if args.clear:
        _remove_idle_locks(root / "compiled")
    print(f"{total / 1e6:9.1f} MB in {root}" + (f", {freed / 1e6:.1f} MB freed" if args.clear else ""))
    return 0


def _remove_idle_locks(folder: Path) -> None:
    """The export cache's lock files (one per export ever built) go too, unless a build holds one right now."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks to test, so none are removed
        return
    for lock in folder.glob("*.lock"):
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a build in progress
            lock.unlink(missing_ok=True)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import build_model
    from .preprocess import PRESETS
    from .weights import class_names_for, preset_for

    checkpoint = read_checkpoint(args.src, source=args.source, transform_input=args.transform_input)
    model = build_model(checkpoint, aux_logits=checkpoint.has_aux and not args.drop_aux)
    class_names = class_names_for(checkpoint, None, model.num_classes)
    preset = PRESETS[args.preprocess] if args.preprocess else preset_for(checkpoint, None)
    save_canonical(model, args.dst, source=checkpoint.source, class_names=list(class_names) if class_names else None,
                   preprocess=preset)
    for note in checkpoint.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.src} ({checkpoint.source}) -> {args.dst}: {model.num_classes} classes, preprocess {preset.name}")
    return 0


# ---------------------------------------------------------------------------------------------
# predict

_GLOB_CHARS = set("*?[")


def expand_inputs(arguments: list[str], stdin=None) -> Iterator[tuple[str, str | None]]:
    """(path, problem) pairs in the order given: files as they are, folders searched recursively, globs
    expanded (sorted), ``-`` read from stdin one path per line. A problem (a folder with no images, a glob
    that matches nothing) becomes a failed row instead of silently vanishing."""
    from .files import IMAGE_EXTENSIONS, find_images

    for argument in arguments:
        if argument == "-":
            for line in stdin or sys.stdin:
                if line.strip():
                    yield from expand_inputs([line.rstrip("\r\n")])
            continue
        path = Path(argument)
        if path.is_dir():
            found = find_images(path)
            if not found:
                yield argument, f"folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
            yield from ((str(f), None) for f in found)
        elif not path.exists() and _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                yield argument, "no files match this pattern"
            for match in matches:
                yield from expand_inputs([match]) if Path(match).is_dir() else [(match, None)]
        else:
            yield argument, None


def output_format(output: str | None, fmt: str | None) -> str:
    """text, csv or jsonl, from ``--format`` or the ``--output`` suffix; checked before any model is loaded."""
    fmt = fmt or (Path(output).suffix.lstrip(".").lower() if output else "text")
    if fmt not in ("text", "csv", "jsonl"):
        raise InputError(f"--output {output}: use a .csv or .jsonl file name, or --format")
    return fmt


class _Rows:
    """Writes result rows as they arrive, in text, CSV or JSONL, so that a long run can be followed. Names are
    written with ``display_name``; CSV cells are guarded against formulas; JSONL is strict JSON (no bare NaN)."""

    def __init__(self, stream, fmt: str, topk: int):
        self.stream, self.fmt, self.topk = stream, fmt, topk
        if fmt == "csv":
            self.writer = SafeCSVWriter(stream)
            header = ["path", "pred_label", "pred_class", "pred_score"]
            for rank in range(1, topk + 1):
                header += [f"top{rank}_label", f"top{rank}_class", f"top{rank}_score"]
            self.writer.writerow(header + ["error"])

    def write(self, path: str, top: list[tuple[int, str | None, float]], error: str | None) -> None:
        path, error = display_name(path), error and display_name(error)
        best = top[0] if top else (None, None, None)
        if self.fmt == "jsonl":
            record = {"path": path, "pred_label": best[0], "pred_class": best[1], "pred_score": best[2],
                      "topk": [{"label": label, "class": name, "score": score} for label, name, score in top],
                      "error": error or ""}
            self.stream.write(json.dumps(record, allow_nan=False) + "\n")
        elif self.fmt == "csv":
            row = [path, *("" if v is None else v for v in best)]
            for rank in range(self.topk):
                row += list(top[rank]) if rank < len(top) else ["", "", ""]
            self.writer.writerow(row + [error or ""])
        elif error:
            self.stream.write(f"{path}\n  error: {error}\n")
        else:
            lines = "".join(f"  {rank + 1}. {score:.4f}  {name or 'class'} ({label})\n"
                            for rank, (label, name, score) in enumerate(top))
            self.stream.write(f"{path}\n{lines}")
        self.stream.flush()


def _unique_png(folder: Path, source: str, used: set[str]) -> Path:
    stem = Path(source).stem or "image"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return folder / f"{name}.png"


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .decode import load_image
    from .inference import Classifier
    from .visualize import save_explanation, save_topk

    fmt = output_format(args.output, args.format)  # a typo in --output fails now, not after the model loads
    if args.cam and not args.save_vis:
        raise InputError("--cam draws into the pictures of --save-vis DIR; give that too")
    choice = resolve_model(args.model, args.weights)
    device = init_distributed() or args.device  # under torchrun: join the group, one GPU per process
    rank, world = rank_world()
    if world > 1 and args.save_vis:
        raise InputError("--save-vis writes its pictures from one process; run it without torchrun")
    entries = list(expand_inputs(args.inputs))
    classifier = Classifier(choice.name_or_path, choice.pretrained, device=device, batch_size=args.batch_size,
                            workers=args.workers, crop_size=args.crop_size, backend=args.backend,
                            precision=args.precision, calibration=_calibration_images(args.calibration),
                            expected_images=len(entries) // world, transform_input=args.transform_input,
                            max_bytes=args.max_bytes, decode=args.decode)
    args.topk = min(args.topk, classifier.num_classes)  # a huge --topk would build a CSV header of that width
    if rank == 0:
        print(f"model: {choice.label}, preprocess: {classifier.preprocess.describe()}, device: {classifier.device}, "
              f"backend: {classifier.backend} {classifier.precision}, decode: {classifier.decode} "
              f"({classifier.workers} threads)" + (f", {world} processes" if world > 1 else ""), file=sys.stderr)
    if world > 1:
        return _predict_sharded(args, entries, classifier, fmt, rank, world)

    problems = {i: problem for i, (_, problem) in enumerate(entries) if problem}
    stream = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    rows = _Rows(stream, fmt, args.topk)
    failures: dict[str, list[str]] = {}
    failed_paths: list[str] = []
    used_names: set[str] = set()
    written = 0
    interrupted = False
    progress = tqdm(total=len(entries), unit="img", file=sys.stderr, dynamic_ncols=True,
                    disable=None if len(entries) > args.batch_size and not args.quiet else True)
    readable = (path for i, (path, _) in enumerate(entries) if i not in problems)
    predictions = classifier.predict(readable)
    try:
        for path, problem in entries:
            if problem:
                top, error, kind = [], problem, "unreadable"
            else:
                prediction = next(predictions)
                top, error = prediction.topk(args.topk, classifier.class_names), prediction.error
                kind = prediction.error_kind
            rows.write(path, top, error)
            written += 1
            progress.update(1)
            if error:
                failures.setdefault(kind or "other", []).append(error)
                failed_paths.append(display_name(path))
            elif args.save_vis:
                target = _unique_png(Path(args.save_vis), path, used_names)
                title = f"{display_name(Path(path).name)} | {choice.label}"
                photo = load_image(path, **classifier.preprocess.decode_options, max_bytes=args.max_bytes)
                if args.cam:
                    explanation = classifier.explain(path, target=top[0][0], method=args.cam, topk=args.topk)
                    if explanation.ok:
                        explanation.topk = top  # the bars of the backend that predicted; the map is eager's
                        save_explanation(target, photo, explanation, title)
                        continue
                save_topk(target, photo, top, title=title)
    except KeyboardInterrupt:  # Ctrl-C: keep every row written so far and still say how far it got
        interrupted = True
    finally:
        predictions.close()
        progress.close()
        if stream is not sys.stdout:
            stream.close()

    if interrupted:
        _summary(args, written, failures, failed_paths, f"interrupted after {written} of {len(entries)} inputs: ")
        return 130
    return _summary(args, written, failures, failed_paths)


def _summary(args: argparse.Namespace, written: int, failures: dict[str, list[str]], failed_paths: list[str],
             prefix: str = "") -> int:
    """The closing line of predict (on stderr), and its exit status. Failures are counted by kind
    (``decode.LOAD_ERROR_KINDS``); each row of the results says the reason in words."""
    summary = prefix + f"{written - len(failed_paths)} ok, {len(failed_paths)} failed"
    if failures:
        ranked = sorted(failures.items(), key=lambda item: -len(item[1]))
        summary += ": " + "; ".join(f"{len(reasons)} x {kind.replace('_', ' ')} ({reasons[0]}"
                                    + (", ..." if len(set(reasons)) > 1 else "") + ")" for kind, reasons in ranked)
        summary += "\n  failed: " + ", ".join(failed_paths[:10]) + (" ..." if len(failed_paths) > 10 else "")
    print(summary + (f" (results in {args.output})" if args.output else ""), file=sys.stderr)
    return 1 if failed_paths and not args.allow_failures else 0


def _predict_sharded(args: argparse.Namespace, entries: list[tuple[str, str | None]], classifier, fmt: str,
                     rank: int, world: int) -> int:
    """predict under torchrun. Batch k of the inputs goes to rank k mod N (as ``test`` shards), so each batch is
    the one a single process would run. The ranks go in rounds: in round r they run batches rN .. rN + N - 1, and
    rank 0 gathers those rows and writes them at once, in input order. So the output grows as the run goes, Ctrl-C
    keeps every round already written, and an output that rank 0 cannot open stops every rank before any image is
    read. Every input must come back exactly once."""
    import torch.distributed as dist

    stream, problem = sys.stdout, None
    if rank == 0 and args.output:
        try:
            stream = open(args.output, "w", newline="", encoding="utf-8")
        except OSError as exc:
            problem = f"--output {args.output}: {exc.strerror or exc}"
    verdict = [problem]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        if rank == 0:
            raise InputError(verdict[0])
        return 2
    chunk = classifier.images_per_chunk(args.batch_size)
    batches = [range(start, min(start + chunk, len(entries))) for start in range(0, len(entries), chunk)]
    mine = shard(len(entries), chunk, rank, world)  # batches rank, rank + world, ...: the rounds below
    predictions = classifier.predict(entries[i][0] for i in mine if not entries[i][1])
    out = _Rows(stream, fmt, args.topk) if rank == 0 else None
    failures: dict[str, list[str]] = {}
    failed_paths: list[str] = []
    written = 0
    try:
        for round_start in range(0, len(batches), world):
            rows = []
            if round_start + rank < len(batches):
                for i in batches[round_start + rank]:
                    path, problem = entries[i]
                    if problem:
                        rows.append((i, [], problem, "unreadable"))
                    else:
                        prediction = next(predictions)
                        rows.append((i, prediction.topk(args.topk, classifier.class_names), prediction.error,
                                     prediction.error_kind))
            parts: list = [None] * world
            dist.all_gather_object(parts, rows)
            if out is None:
                continue
            for index, top, error, kind in sorted((row for part in parts for row in part), key=lambda row: row[0]):
                if index != written:
                    raise RuntimeError(f"row {index} came back where row {written} belongs: the shards overlap or miss")
                out.write(entries[index][0], top, error)
                written += 1
                if error:
                    failures.setdefault(kind or "other", []).append(error)
                    failed_paths.append(display_name(entries[index][0]))
    except KeyboardInterrupt:  # Ctrl-C reaches every rank: rank 0 keeps the rounds it wrote and says how far
        if out is not None:
            _summary(args, written, failures, failed_paths, f"interrupted after {written} of {len(entries)} inputs: ")
        return 130
    finally:
        predictions.close()
        if stream is not sys.stdout:
            stream.close()
    if out is None:
        return 0
    if written != len(entries):
        raise RuntimeError(f"wrote {written} rows for {len(entries)} inputs: the shards miss some")
    return _summary(args, written, failures, failed_paths)


# ---------------------------------------------------------------------------------------------
# explain


def _explain_scores(value: str | None, steps: int) -> tuple[str, ...]:
    """``--score a,b``: the scores, checked (with ``--steps`` and scipy) before any image is explained."""
    from .faithfulness import check_request

    if value is None:
        return ()
    chosen = tuple(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    check_request(chosen, steps)
    return chosen


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from .explain import AUGMENTATIONS, METHODS, PER_CHANNEL_METHODS, channel_count
    from .inference import Classifier

    if args.method not in METHODS:  # argparse checks it too; this keeps the API and the command in step
        raise InputError(f"--method must be one of {', '.join(METHODS)}")
    scores = _explain_scores(args.score, args.steps)
    choice = resolve_model(args.model, args.weights)
    entries = list(expand_inputs(args.inputs))
    classifier = Classifier(choice.name_or_path, choice.pretrained, device=args.device, backend="eager", workers=1,
                            transform_input=args.transform_input, max_bytes=args.max_bytes, crop_size=args.crop_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    readable = [path for path, problem in entries if not problem]
    bar = None
    if args.method in PER_CHANNEL_METHODS:  # thousands of passes: say so, and show them going
        passes = channel_count(classifier.model, args.layer) * (len(AUGMENTATIONS) if args.aug_smooth else 1)
        print(f"{args.method} at {args.layer}: {passes} passes per image", file=sys.stderr)
        bar = tqdm(total=passes * len(readable), unit="pass", disable=not sys.stderr.isatty())
    explanations = classifier.explain_many(readable, args.target, args.method, layer=args.layer, topk=args.topk,
                                           aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth,
                                           progress=bar.update if bar else None)
    try:
        rows = _explain_rows(args, classifier, choice, entries, explanations, scores, out)
    finally:
        if bar:
            bar.close()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "explanations.csv", "w", newline="", encoding="utf-8") as handle:
        writer = SafeCSVWriter(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
    with open(out / "explanations.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, default=float) + "\n" for row in rows)
    ok = sum(1 for row in rows if not row.get("error"))
    if scores and ok:
        _print_score_summary(rows, scores)
    explained = [path for (path, _), row in zip(entries, rows, strict=True) if not row.get("error")]
    if args.sanity and explained:
        _print_sanity(args, classifier, explained[:args.sanity], out)
    print(f"{ok} ok, {len(rows) - ok} failed (written to {display_name(out)}: pictures, explanations.csv and "
          ".jsonl)", file=sys.stderr)
    return 1 if len(rows) > ok and not args.allow_failures else 0


def _explain_rows(args, classifier, choice, entries, explanations, scores, out: Path) -> list[dict]:
    """One row per input: what was explained, where the picture went, and the faithfulness scores asked for."""
    import numpy as np

    from .decode import load_image
    from .visualize import save_explanation

    used: set[str] = set()
    rows = []
    for path, problem in entries:
        row: dict = {"input": display_name(path)}
        rows.append(row)
        if problem:
            print(f"{display_name(path)}\n  error: {problem}")
            row["error"] = problem
            continue
        e = next(explanations)
        print(f"{display_name(path)}\n  {e.describe()}")
        if not e.ok:
            row["error"] = e.error
            continue
        picture = _unique_png(out, path, used)
        if args.format == "npy":
            picture = picture.with_suffix(".npy")
            np.save(picture, e.heatmap.astype(np.float32))
        else:
            save_explanation(picture, load_image(path, **classifier.preprocess.decode_options,
                                                 max_bytes=args.max_bytes),
                             e, title=f"{display_name(Path(path).name)} | {choice.label}")
        row.update({"target": e.target, "target_name": e.target_name, "target_score": e.target_score,
                    "method": e.method, "layer": e.layer, "empty": e.empty, "file": picture.name})
        if scores and not e.empty and not e.flat:  # a flat or empty map ranks nothing: no score to give
            result = classifier.faithfulness(e, scores, baseline=args.baseline, steps=args.steps, seed=args.seed)
            row.update(result.row())
            row.update({f"setting_{k}": v for k, v in result.settings.items() if k != "target"})
            print("  " + ", ".join(f"{s} {result.scores[s]:.4f} (random {result.random[s]:.4f}"
                                   f"{', beaten' if result.beats_random(s) else ', NOT beaten'})" for s in scores))
    return rows


def _print_score_summary(rows: list[dict], scores: tuple[str, ...]) -> None:
    import numpy as np

    scored = [row for row in rows if scores[0] in row]
    if not scored:
        return
    print(f"faithfulness over {len(scored)} images:", file=sys.stderr)
    for s in scores:
        ours = np.mean([row[s] for row in scored])
        chance = np.mean([row[f"{s}_random"] for row in scored])
        wins = sum(bool(row[f"{s}_beats_random"]) for row in scored)
        print(f"  {s:9s} mean {ours:.4f}, random map {chance:.4f}; the map beats random on {wins} of {len(scored)}",
              file=sys.stderr)


def _print_sanity(args, classifier, paths: list[str], out: Path) -> None:
    """The model-randomisation check on the first images: each step's rank correlation with the original map."""
    with open(out / "sanity.csv", "w", newline="", encoding="utf-8") as handle:
        writer = SafeCSVWriter(handle)
        writer.writerow(["input", "randomised_down_to", "rank_correlation"])
        for path in paths:
            steps = classifier.sanity(path, args.target, args.method, layer=args.layer, seed=args.seed,
                                      aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
            print(f"sanity (cascading randomisation) of {display_name(path)}:", file=sys.stderr)
            for name, rho in steps:
                writer.writerow([display_name(path), name, round(rho, 6)])
                print(f"  down to {name:14s} rank correlation {rho:+.3f}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# test


def _cmd_test(args: argparse.Namespace) -> int:
    import numpy as np
    import torch.distributed as dist

    from .data import load_dataset, read_class_names
    from .evaluate import EvalConfig, evaluate, write_confusion_csv, write_predictions_csv, write_report
    from .inference import Classifier
    from .visualize import save_eval_plot

    device = init_distributed() or args.device
    try:
        choices = ([resolve_model(name) for name in args.ensemble] if args.ensemble
                   else [resolve_model(args.model, args.weights)])
        class_names = read_class_names(args.classes) if args.classes else None
        dataset = load_dataset(args.data, args.ann, class_names, args.skip_missing,
                               label_by_folder_order=args.label_by_folder_order).head(args.limit)
        members = [Classifier(choice.name_or_path, choice.pretrained, device=device, batch_size=args.batch_size,
                              workers=args.workers,
                              crops=args.crops, backend=args.backend, precision=args.precision,
                              transform_input=args.transform_input, max_bytes=args.max_bytes,
                              class_names=class_names, decode=args.decode,
                              calibration=_calibration_images(args.calibration),
                              expected_images=len(dataset) * args.crops)
                   for choice in choices]
        config = EvalConfig(data=str(args.data), ann=args.ann, models=tuple(c.label for c in choices),
                            batch_size=args.batch_size, limit=args.limit, crops=args.crops,
                            real_labels=args.real_labels)
        outcome = evaluate(members, dataset, config, progress=not args.quiet)
        if outcome is None:  # not rank 0
            return 0
        report, scores, matrix = outcome
        names = report["class_names"]
        outputs = []
        if args.out:
            write_report(args.out, report)
            outputs.append(args.out)
        confusion = args.confusion or (str(Path(args.out).with_suffix(".confusion.csv")) if args.out else None)
        plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        # Only the classes that were a label or a prediction: six class folders are not a 1000 x 1000 matrix.
        present = [int(i) for i in np.flatnonzero(matrix.sum(axis=0) + matrix.sum(axis=1))]
        shown = matrix[np.ix_(present, present)]
        if confusion:
            write_confusion_csv(confusion, shown, [names[i] for i in present])
            outputs.append(confusion)
        if plot:
            m = report["metrics"]
            save_eval_plot(plot, shown, [names[i] for i in present], [m["per_class_accuracy"][i] for i in present],
                           [m["per_class_count"][i] for i in present], m["top1"])
            outputs.append(plot)
        if args.predictions:
            write_predictions_csv(args.predictions, scores, names)
            outputs.append(args.predictions)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

    m = report["metrics"]
    line = f"top-1 {report['top1']:.3f}  top-5 {report['top5']:.3f}"
    if "real_top1" in report:
        line += f"  ReaL {report['real_top1']:.3f}"
    line += (f"  macro P/R/F1 {m['macro_precision']:.2f}/{m['macro_recall']:.2f}/{m['macro_f1']:.2f}"
             f"  on {m['count']} images ({args.crops} crop{'s' if args.crops > 1 else ''}"
             f", {report['images_per_s']:.1f} img/s, {report['processes']} process"
             f"{'es' if report['processes'] > 1 else ''})")
    print(line)
    failed = report["data"]["failed"]
    if report["data"]["skipped_missing"]:
        print(f"skipped {report['data']['skipped_missing']} missing files (--skip-missing)", file=sys.stderr)
    if failed:
        print(f"{len(failed)} images could not be read and are not in the metrics: "
              + "; ".join(f"{f['path']}: {f['error']}" for f in failed[:5]), file=sys.stderr)
    if outputs:
        print("wrote " + ", ".join(outputs), file=sys.stderr)
    return 1 if failed and not args.allow_failures else 0


# ---------------------------------------------------------------------------------------------
# train


def _cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .train import TrainConfig, Trainer

    device = init_distributed()
    try:
        if args.resume:
            trainer = Trainer.resume(args.resume)
            if trainer.step >= trainer.total_steps:  # nothing left: say so instead of rewriting its files
                if trainer.rank == 0:
                    print(f"{args.resume} has finished: step {trainer.step} of {trainer.total_steps}; weights in "
                          f"{trainer.config.out}/last.safetensors (train --out NEW_DIR --weights it to go further)")
                return 0
        else:
            if not args.data or not args.out:
                raise InputError("--data and --out are required (or --resume RUN_DIR)")
            if args.epochs is not None and args.max_steps is not None:
                raise InputError("give --epochs or --max-steps, not both")
            config = config_from(TrainConfig, args, device=str(device) if device is not None else args.device)
            trainer = Trainer(config)
        summary = trainer.run()
        main_process = is_main_process()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if main_process:
        best = f", best val top-1 {summary['best_val_top1']:.2f}%" if summary["best_val_top1"] >= 0 else ""
        print(f"trained to step {summary['step']}{best}; weights in {trainer.config.out}/last.safetensors")
    return 0


# ---------------------------------------------------------------------------------------------
# export


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import LOW_PRECISION_MIN_AGREEMENT, TOLERANCES, export_model, load_runner, sample_batch, verify_export
    from .weights import get_model

    choice = resolve_model(args.model, args.weights)
    model = get_model(choice.name_or_path, choice.pretrained, transform_input=args.transform_input)
    preset = model.weights_info.preprocess
    batch = sample_batch(preset, args.check_images or ())
    example = batch[:2] if args.dynamic_batch else batch[:args.batch_size]  # size 1 would be traced as a constant
    sizes = (1, min(7, len(batch))) if args.dynamic_batch else (args.batch_size,)
    calibration = None
    if args.calibration:
        calibration = preset.batch(_calibration_images(args.calibration))
    print(f"exporting {choice.label} to {args.format} {args.precision} (Inception V3 takes 5-30 s)...", file=sys.stderr)
    path = export_model(model, args.format, args.out, example=example, dynamic_batch=args.dynamic_batch,
                        precision=args.precision, calibration=calibration)
    print(f"checking {path} against eager PyTorch on {len(batch)} views at batch sizes {sizes}...", file=sys.stderr)
    min_agreement = args.min_agreement if args.min_agreement is not None else (
        0.0 if args.precision == "fp32" else LOW_PRECISION_MIN_AGREEMENT)
    try:
        check = verify_export(model, load_runner(path, args.format), batch, sizes, TOLERANCES[args.precision],
                              min_agreement)
    except Exception as exc:  # an artefact that does not even run is a failed export
        check = None
        message = f"{type(exc).__name__}: {exc}"
    if check is None or not check.passed:
        for leftover in (path, path.with_suffix(".bin")) if args.format == "openvino" else (path,):
            leftover.unlink(missing_ok=True)
        reason = check.describe() if check is not None else message
        print(f"inceptionv3 export: error: {path} failed its check and was removed: {reason}", file=sys.stderr)
        return 1
    print(f"{path}: {args.format} {args.precision}, input N x 3 x {preset.crop} x {preset.crop} "
          f"({'dynamic' if args.dynamic_batch else args.batch_size} batch), preprocessing {preset.describe()}")
    print(f"check on real pixels: {check.describe()}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import platform

    from .benchmark import benchmark
    from .export import sample_batch
    from .weights import get_model

    choice = resolve_model(args.model, args.weights)  # random weights unless a file is given: speed is the same
    model = get_model(choice.name_or_path, choice.pretrained if args.weights else False,
                      transform_input=args.transform_input)
    batch = sample_batch(model.weights_info.preprocess)
    rows = benchmark(model.eval(), batch, args.backends.split(","), args.precision.split(","),
                     [int(b) for b in args.batch_sizes.split(",")], seconds=args.seconds)
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
          f"{', random weights (speed does not depend on them)' if not args.weights else ''}")
    print("| backend | precision | batch | img/s | latency (ms) | x eager fp32 | GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{100 * r['fraction_of_peak']:.0f} % of {r['matmul_peak_gflop_per_s']:.0f}" if r[
            "fraction_of_peak"] else "-"
        print(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['img_per_s']:.1f} | {r['latency_ms']:.1f} "
              f"| {r['ratio_to_eager_fp32']:.2f} | {r['gflop_per_s']:.0f} | {peak} |")
    return 0


def _calibration_images(folder: str | None) -> list[str] | None:
    from .files import find_images

    if folder is None:
        return None
    images = [str(p) for p in find_images(folder)][:300]
    if not images:
        raise InputError(f"--calibration {folder}: no images there")
    return images


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"zoo name (default {DEFAULT_MODEL} unless --weights)")
    p.add_argument("--weights", help="checkpoint file; with --model, loaded into that zoo entry")
    _add_transform_input(p)


def _add_transform_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transform-input", action="store_true",
                   help="the checkpoint expects torchvision's transform_input (folded into the weights); "
                        "torchvision's own Google file is recognised without it")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """What predict and test share: where and how the model runs, and how failures end the command."""
    from .backends import BACKENDS, PRECISIONS
    from .decode import DECODE_MODES, MAX_BYTES

    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--workers", type=int, help="decoding threads per process (default: up to 4)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): the fastest installed; eager: the reference's exact arithmetic")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8: OpenVINO post-training quantisation, calibrated on --calibration; with --backend "
                   "litert, dynamic-range int8 (no calibration)")
    p.add_argument("--calibration", metavar="DIR", help="images like yours, for int8 (a few hundred)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                   help=f"refuse input files larger than this (default {MAX_BYTES // 1024**2} MB)")
    p.add_argument("--decode", choices=DECODE_MODES, default="auto",
                   help="exact: every pixel, as the reference decodes; fast: large JPEGs at a reduced DCT scale "
                   "(several times faster on camera photos); auto (default): exact on eager fp32, else fast")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some inputs could not be read")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from .decode import MAX_BYTES
    from .preprocess import PRESETS
    from .weights import DEADLINE_S, MIN_RATE

    parser = argparse.ArgumentParser(prog="inceptionv3", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list the weight zoo")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*tf*'")
    p.set_defaults(func=_cmd_list)

    p = commands.add_parser("info", help="print a model card")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = commands.add_parser("download", help="fetch and verify a model's weights into the cache")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds one read may wait (the whole transfer is bounded by --deadline)")
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds one file's whole transfer may take")
    p.add_argument("--min-rate", type=float, default=MIN_RATE,
                   help="bytes per second below which a transfer is abandoned (averaged over a minute)")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="no network: put this copy of the file into the cache, once its hash matches")
    p.set_defaults(func=_cmd_download)

    p = commands.add_parser("cache", help="list the downloaded weights and compiled exports, or clear them")
    p.add_argument("--clear", choices=["compiled", "all"], help="remove the compiled exports, or everything")
    p.set_defaults(func=_cmd_cache)

    p = commands.add_parser("convert", help="convert any supported checkpoint to canonical safetensors")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--source", choices=SOURCES, help="checkpoint format (detected when omitted)")
    _add_transform_input(p)
    p.add_argument("--preprocess", choices=sorted(PRESETS), help="preset to record (default: the source's)")
    p.add_argument("--drop-aux", action="store_true", help="leave out the auxiliary head")
    p.set_defaults(func=_cmd_convert)

    p = commands.add_parser("predict", help="classify image files, folders, globs or paths from stdin")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder (recursive), glob, or - for stdin")
    _add_model_options(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop-size", type=int, help="override the preset's crop (warns below 299 on ImageNet weights)")
    p.add_argument("--output", help="results file: .csv or .jsonl (default: text on stdout)")
    p.add_argument("--format", choices=("text", "csv", "jsonl"), help="output format (default: from --output)")
    p.add_argument("--save-vis", metavar="DIR", help="write one PNG per image: the image and its top-k bars")
    p.add_argument("--cam", nargs="?", const="gradcam", choices=EXPLAIN_METHODS, metavar="METHOD",
                   help="with --save-vis: add the heatmap of the top-1 class (on the crop and on the photo) to each "
                   "picture; METHOD as explain's --method (default gradcam)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_predict)

    p = commands.add_parser("explain", help="Grad-CAM heatmaps: which parts of each image raised its class")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder (recursive), glob, or - for stdin")
    _add_model_options(p)
    p.add_argument("--target", default="top1", help="top1 (default), a class index or a class name")
    p.add_argument("--method", choices=EXPLAIN_METHODS, default="gradcam",
                   help="gradcam (default), gradcam++, hirescam, xgradcam, layercam (each from the target's gradient), "
                   "eigencam (the layer's first principal component, whatever the target), scorecam or ablationcam "
                   "(one pass per channel of the layer: 2048 at Mixed_7c)")
    p.add_argument("--aug-smooth", action="store_true", help="grad-cam's test-time smoothing: 6 passes (flipped, "
                   "input x 0.9, 1, 1.1), averaged")
    p.add_argument("--eigen-smooth", action="store_true", help="grad-cam's eigen smoothing: the first principal "
                   "component of the weighted channels instead of their sum")
    p.add_argument("--layer", default="Mixed_7c", help="module to explain at, by dotted name (default Mixed_7c)")
    p.add_argument("--crop-size", type=int, help="override the preset's crop (warns below 299 on ImageNet weights)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--out", default="explanations", help="folder for the pictures (default ./explanations)")
    p.add_argument("--format", choices=("png", "npy"), default="png",
                   help="png: the pictures; npy: the crop-sized heatmap as float32 in [0, 1]")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                   help=f"refuse input files larger than this (default {MAX_BYTES // 1024**2} MB)")
    p.add_argument("--score", metavar="deletion,insertion,road",
                   help="faithfulness scores of each map, beside a random map's (columns of explanations.csv)")
    p.add_argument("--baseline", choices=("blur", "mean", "zeros"), default="blur",
                   help="what deleted pixels become, for deletion and insertion (default blur)")
    p.add_argument("--steps", type=int, default=50, help="deletion and insertion steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random maps, ROAD's noise and --sanity")
    p.add_argument("--sanity", type=int, nargs="?", const=2, default=0, metavar="N",
                   help="the model-randomisation check on the first N images (default 2): written to sanity.csv")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some inputs could not be read")
    p.set_defaults(func=_cmd_explain)

    p = commands.add_parser("test", help="score a labelled dataset: top-1/top-5, per-class, ReaL, multi-crop")
    p.add_argument("--data", required=True, help="class folders, an image folder (with --ann) or an annotation file")
    p.add_argument("--ann", help="'filename label' lines, file names relative to --data (ImageNet val.txt)")
    _add_model_options(p)
    p.add_argument("--ensemble", nargs="+", metavar="W", help="average the softmax of these zoo names or files")
    p.add_argument("--batch-size", type=int, default=32, help="tensors per forward pass, per process")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--crops", type=int, choices=(1, 10, 144), default=1,
                   help="1: the preset's centre crop; 10: corners and centre, mirrored; 144: the paper's protocol")
    p.add_argument("--classes", help="the model's class names in output order, one per line (or classes.tsv); "
                   "class folders are matched to them by name, synonym or wnid")
    p.add_argument("--label-by-folder-order", action="store_true",
                   help="label class folders 0, 1, 2... in sorted order instead of matching their names")
    p.add_argument("--real-labels", help="ImageNet-ReaL real_labels.json, for ReaL accuracy")
    p.add_argument("--skip-missing", action="store_true", help="score the files that exist and report the count")
    p.add_argument("--out", help="report JSON; also writes OUT.confusion.csv and OUT.png beside it")
    p.add_argument("--confusion", help="confusion matrix CSV (default: beside --out)")
    p.add_argument("--plot", help="PNG: confusion matrix up to 40 classes, else per-class accuracy")
    p.add_argument("--predictions", help="CSV with one row per image: path, label, top-5")
    _add_run_options(p)
    p.set_defaults(func=_cmd_test)

    from .train import TrainConfig

    p = commands.add_parser("train", help="train or fine-tune; --resume RUN_DIR continues a run exactly")
    add_flags(p, TrainConfig, skip=("extra",))  # --data and --out are checked later: --resume needs neither
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run with its own settings")
    p.set_defaults(func=_cmd_train, model=None, weights=None)

    from .backends import PRECISIONS
    from .export import FORMATS

    p = commands.add_parser("export", help="export to ONNX, OpenVINO, TorchScript, torch.export or LiteRT, then "
                            "check it")
    p.add_argument("model", nargs="?", help=f"zoo name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="with a zoo name: load this file into it")
    _add_transform_input(p)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (checked at two sizes)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size (without --dynamic-batch)")
    p.add_argument("--check-images", nargs="+", help="photos for the check (default: the packaged demo photo)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: openvino; int8: openvino (static, with --calibration) or litert (dynamic-range)")
    p.add_argument("--calibration", metavar="DIR", help="images like yours, for int8 (a few hundred)")
    p.add_argument("--min-agreement", type=float,
                   help="least top-1 agreement with eager fp32 on the check images (default 0.9 for bf16, int8)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)

    p = commands.add_parser("benchmark", help="images per second of each backend against eager fp32, one run")
    p.add_argument("--model", help=f"zoo entry, with random weights (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="a checkpoint file instead")
    _add_transform_input(p)
    p.add_argument("--backends", default="eager,compile,openvino,onnxruntime")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, int8 (calibrated on the "
                   "benchmark's own photo crops)")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per path and batch size")
    p.set_defaults(func=_cmd_benchmark)

    from .fid_commands import add_commands as add_metric_commands

    add_metric_commands(commands)  # fid, features
    from .serve import add_command as add_serve_command

    add_serve_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Our errors (a bad file, argument, download or dataset) print one line naming the culprit and exit 2;
    anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    for flag in ("topk", "batch_size", "limit"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            print(f"inceptionv3 {args.command}: error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except InceptionV3Error as exc:
        print(f"inceptionv3 {args.command}: error: {display_name(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug or the system, keep the traceback
            raise
        print(f"inceptionv3 {args.command}: error: {display_name(str(exc.filename))}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"inceptionv3 {args.command}: interrupted", file=sys.stderr)
        return 130
