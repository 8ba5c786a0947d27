"""The ``inceptionv3`` command: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import SOURCES, CheckpointError, read_checkpoint, save_canonical


def _cmd_list(args: argparse.Namespace) -> int:
    from .weights import ZOO, list_models

    for name in list_models(args.pattern):
        entry = ZOO[name]
        top1 = entry.metrics[0].top1
        print(f"{name:36s} {entry.source:12s} top-1 {top1:6.3f}  {entry.preprocess.name}")
    return 0


def model_card(name: str) -> str:
    from .weights import cache_dir, get_entry

    entry = get_entry(name)
    cached = entry.cached_file()
    lines = [
        f"{entry.name}",
        f"  params        {entry.params:,} (27,161,264 with the auxiliary head)",
        f"  FLOPs         {entry.macs / 1e9:.3f} G conv+fc multiply-adds (torchvision's count)",
        f"                {entry.flops_mmpretrain / 1e9:.3f} G adding BN, ReLU and pooling (mmpretrain's count)",
        f"  input         3 x {entry.preprocess.crop} x {entry.preprocess.crop}, RGB",
        f"  preprocessing {entry.preprocess.describe()}",
        f"                ({entry.preprocess.source_note})",
        "  metrics       " + "\n                ".join(
            f"top-1 {m.top1:.3f}  top-5 {m.top5:.3f}  ({m.measured_by})" for m in entry.metrics
        ),
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
    from .weights import download_weights, get_entry

    path, weight_file = download_weights(get_entry(args.name), timeout=args.timeout)
    print(f"{args.name}: {path} ({weight_file.url})")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import build_model
    from .weights import _class_names_for, _preset_for

    checkpoint = read_checkpoint(args.src, source=args.source, transform_input=args.transform_input)
    model = build_model(checkpoint, aux_logits=checkpoint.has_aux and not args.drop_aux)
    class_names = _class_names_for(checkpoint, None, model.num_classes)
    preset = args.preprocess or _preset_for(checkpoint, None).name
    save_canonical(model, args.dst, source=checkpoint.source, class_names=list(class_names) if class_names else None,
                   preprocess=preset)
    for note in checkpoint.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.src} ({checkpoint.source}) -> {args.dst}: {model.num_classes} classes, preprocess {preset}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .preprocess import PRESETS

    parser = argparse.ArgumentParser(prog="inceptionv3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list the weight zoo")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*tf*'")
    p.set_defaults(func=_cmd_list)

    p = commands.add_parser("info", help="print a model card")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = commands.add_parser("download", help="fetch and verify a model's weights into the cache")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds without data before a retry")
    p.set_defaults(func=_cmd_download)

    p = commands.add_parser("convert", help="convert any supported checkpoint to canonical safetensors")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--source", choices=SOURCES, help="checkpoint format (detected when omitted)")
    p.add_argument("--transform-input", action="store_true",
                   help="the checkpoint expects torchvision's transform_input (folded into the weights)")
    p.add_argument("--preprocess", choices=sorted(PRESETS), help="preset to record (default: the source's)")
    p.add_argument("--drop-aux", action="store_true", help="leave out the auxiliary head")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .weights import WeightsDownloadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, WeightsDownloadError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"inceptionv3 {args.command}: error: {message}", file=sys.stderr)
        return 2
