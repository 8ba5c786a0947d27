"""The ``fid`` and ``features`` commands: argument checks before any image is read, then the library's
:mod:`.features` (and :mod:`.adm` for ``fid --adm``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .adm import ADM_PRESET, adm_evaluate, adm_side, count_images, first_images
from .errors import InputError
from .features import (
    FEATURE_BACKENDS,
    Extractor,
    Features,
    FolderResult,
    check_comparable,
    extract_features,
    find_inputs,
    folder_statistics,
    is_main_process,
    make_extractor,
)
from .fid_math import (
    FD_METHODS,
    FIDStatistics,
    FrechetDistance,
    MeanStd,
    PrecisionRecall,
    density_coverage,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    npz_keys,
    precision_recall,
)
from .fid_network import LAYERS
from .fid_presets import DEFAULT_PRESET, FID_PRESETS
from .fid_sensitivity import fid_sensitivity, save_heatmaps
from .files import atomic_path, display_name
from .image_arrays import is_image_array
from .runtime import init_distributed
from .weights import FID_SHA256


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _npz_side(path: str, layer: str, keep_features: bool, keep_logits: bool) -> FolderResult:
    """A statistics file (``mu``, ``sigma``), or a features file from ``inceptionv3 features`` holding ``layer``."""
    keys = npz_keys(path)
    if {"mu", "sigma"} <= keys:
        if keep_features or keep_logits:
            raise InputError(f"{display_name(path)}: KID, IS and precision/recall need images or features, not "
                             "statistics")
        return FolderResult(FIDStatistics.load(path))
    features = Features.load(path)
    if layer not in features.arrays or (keep_logits and "logits_unbiased" not in features.arrays):
        wanted = layer + (" and logits_unbiased" if keep_logits else "")
        raise InputError(f"{display_name(path)}: holds {', '.join(sorted(features.arrays))}, not {wanted} "
                         "(write it with inceptionv3 features --layers ...)")
    stats = FIDStatistics().update(features.arrays[layer])
    stats.meta = dict(features.meta, layer=layer, dims=stats.dims, n=stats.n)
    return FolderResult(stats, features.arrays[layer] if keep_features else None,
                        features.arrays.get("logits_unbiased") if keep_logits else None)


def _side(path: str, extractor_for: Any, args: argparse.Namespace, keep_features: bool,
          keep_logits: bool) -> FolderResult:
    """Statistics or features from a file when it holds them (an ADM reference batch holds both statistics and
    images: the statistics are used unless KID, IS or precision/recall need every image's features)."""
    if _precomputed(path, keep_features or keep_logits):
        return _npz_side(path, str(args.dims), keep_features, keep_logits)
    return folder_statistics(path, extractor_for(), layer=str(args.dims), batch_size=args.batch_size,
                             workers=args.workers, skip_bad=args.skip_bad, keep_features=keep_features,
                             keep_logits=keep_logits, progress=not args.quiet,
                             pytorch_fid_glob=args.pytorch_fid_glob)


def _is_array_file(path: str) -> bool:
    return path.endswith((".npz", ".npy")) and not Path(path).is_dir()


def _precomputed(path: str, need_features: bool) -> bool:
    """Whether a side is read as statistics or features rather than computed from images: an ``.npz`` without
    ``arr_0``, or an ADM reference batch (statistics and images) when only its statistics are needed."""
    if not _is_array_file(path) or path.endswith(".npy") or not is_image_array(path):
        return _is_array_file(path) and path.endswith(".npz")
    return {"mu", "sigma"} <= npz_keys(path) and not need_features


def _check_fid_options(args: argparse.Namespace) -> dict[str, int]:
    """Every precondition that can be known from the arguments and the folders' listings, before the first image
    is read: a long extraction must never end on a bad option. Returns each folder side's image count."""
    if args.kid and (args.kid_subset_size < 2 or args.kid_subsets < 1):
        raise InputError(f"--kid-subset-size must be at least 2 and --kid-subsets at least 1, got "
                         f"{args.kid_subset_size} and {args.kid_subsets}")
    if args.isc and args.isc_splits < 1:
        raise InputError(f"--isc-splits must be at least 1, got {args.isc_splits}")
    for flag, on, k in (("--prc-k", args.prc, args.prc_k), ("--prdc-k", args.prdc, args.prdc_k)):
        if on and k < 1:
            raise InputError(f"{flag} must be at least 1, got {k}")
    if args.isc and args.weights and not args.force:
        raise InputError("--isc: IS is defined on the published FID network's logits, not on --weights "
                         f"{display_name(args.weights)}; pass --force to compute it anyway")
    if args.heatmaps and (args.top < 1 or _precomputed(args.paths[0], True) or args.save_stats):
        raise InputError("--heatmaps draws the first path's images: it must be a folder or an image array, with "
                         f"--top at least 1 (got {args.top}), and no --save-stats")
    inputs = args.paths[:1] if args.save_stats else args.paths  # with --save-stats the second is the output
    counts = {path: count_images(path) for path in inputs
              if Path(path).is_dir() or (_is_array_file(path) and not _precomputed(path, False))}
    if args.save_stats:
        return counts
    for path, n in counts.items():
        if args.kid and n < args.kid_subset_size:
            raise InputError(f"--kid: {display_name(path)} has {n} images, fewer than --kid-subset-size "
                             f"{args.kid_subset_size} (each side needs that many); lower --kid-subset-size")
        if args.prdc and n <= args.prdc_k:
            raise InputError(f"--prdc: {display_name(path)} has {n} images; --prdc-k {args.prdc_k} needs more "
                             "than that many per side")
        if args.prc and n <= args.prc_k:
            raise InputError(f"--prc: {display_name(path)} has {n} images; --prc-k {args.prc_k} needs more than "
                             "that many per side")
    first = args.paths[0]
    if args.isc and first in counts and counts[first] < args.isc_splits:
        raise InputError(f"--isc: {display_name(first)} has {counts[first]} images, fewer than --isc-splits "
                         f"{args.isc_splits}")
    return counts


def _check_adm_options(args: argparse.Namespace) -> None:
    if args.with_images < 0 or (args.with_images and not args.save_stats):
        raise InputError("--with-images N stores N >= 0 images in the statistics file of --adm --save-stats")
    others = [flag for flag, value in (("--kid", args.kid), ("--isc", args.isc), ("--prc", args.prc),
                                       ("--prdc", args.prdc),
                                       ("--dims", args.dims != 2048), ("--fd-method", args.fd_method != "eigh"))
              if value]
    if others:
        raise InputError(f"--adm computes the evaluator's five numbers with its own settings; leave out "
                         f"{', '.join(others)}")
    if args.preset not in (None, ADM_PRESET):
        raise InputError(f"--adm uses the evaluator's preprocessing (--preset {ADM_PRESET}), not {args.preset}")


def _cmd_adm(args: argparse.Namespace) -> int:
    """``fid --adm REF SAMPLE``: the evaluator's argument order and its five printed lines."""
    _check_adm_options(args)
    device = init_distributed() or args.device
    if not is_main_process():
        args.quiet = True
    ref, second = args.paths
    if args.save_stats:
        out = Path(second)
        if out.exists() and not args.overwrite:
            raise InputError(f"{out} exists; pass --overwrite to replace it")
        extractor = make_extractor(ADM_PRESET, args.weights, device=device, backend=args.backend,
                                   images=count_images(ref))
        side = adm_side(ref, extractor, batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
        if is_main_process():
            side.stats.meta = dict(extractor.meta(), layer="2048", n=side.stats.n, adm=True)
            images = first_images(find_inputs(ref), args.with_images, extractor) if args.with_images else None
            side.stats.save(out, overwrite=args.overwrite, spatial=side.spatial, images=images)
            held = f" and arr_0 with the first {images[0][0]} images" if images else ""
            print(f"saved ADM statistics (mu, sigma, mu_s, sigma_s) of {side.stats.n} images{held} to {out}")
        return 0
    result = adm_evaluate(ref, second, weights=args.weights, device=device, backend=args.backend,
                          batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
    if not is_main_process():
        return 0
    print("\n".join(result.lines()))
    if args.json:
        _write_json(args.json, result.as_dict(), args.overwrite)
    return 0


def _write_json(path: str, report: dict, overwrite: bool) -> None:
    out = Path(path)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def _cmd_fid(args: argparse.Namespace) -> int:
    if args.with_images and not args.adm:
        raise InputError("--with-images goes with --adm --save-stats (an ADM reference batch)")
    if args.json and Path(args.json).exists() and not args.overwrite:  # before a long extraction, not after
        raise InputError(f"{args.json} exists; pass --overwrite to replace it")
    if args.adm:
        return _cmd_adm(args)
    counts = _check_fid_options(args)
    cached: list[Extractor] = []
    device = init_distributed() or args.device  # under torchrun: join the group, one GPU per process
    if not is_main_process():
        args.quiet = True

    def extractor_for() -> Extractor:
        if not cached:
            cached.append(make_extractor(args.preset, args.weights, device=device, backend=args.backend,
                                         images=sum(counts.values())))
        return cached[0]

    first, second = args.paths
    if args.save_stats:
        out = Path(second)
        if out.exists() and not args.overwrite:
            raise InputError(f"{out} exists; pass --overwrite to replace it")
        result = _side(first, extractor_for, args, False, False)
        if is_main_process():
            result.stats.save(out, overwrite=args.overwrite)
            print(f"saved statistics of {result.stats.n} images to {out}")
        return 0
    keep = args.kid or args.prc or args.prdc  # every feature of both sides; --heatmaps needs the first side's only
    one = _side(first, extractor_for, args, keep or bool(args.heatmaps), args.isc)
    two = _side(second, extractor_for, args, keep, False)
    check_comparable(one.stats.meta, two.stats.meta, args.force)
    distance: FrechetDistance = frechet_distance(one.stats, two.stats, method=args.fd_method)
    report: dict[str, Any] = {"fid": distance.fid, "parts": distance.as_dict(),
                              "inputs": [{"path": first, "meta": one.stats.meta},
                                         {"path": second, "meta": two.stats.meta}]}
    preset = one.stats.meta.get("preset") or two.stats.meta.get("preset") or "unknown"
    lines = [f"FID: {distance.fid:.6f}  (preset {preset}, {distance.dims}-d)",
             f"  |mu1-mu2|^2 {distance.mean_term:.6f}  tr S1 {distance.trace1:.6f}  tr S2 {distance.trace2:.6f}  "
             f"tr sqrt(S1 S2) {distance.trace_sqrt:.6f}  N {distance.n1}/{distance.n2}  d {distance.dims}"]
    if args.kid:
        kid: MeanStd = kernel_inception_distance(one.features, two.features, subsets=args.kid_subsets,
                                                 subset_size=args.kid_subset_size)
        report["kid"] = {"mean": kid.mean, "std": kid.std, "subsets": args.kid_subsets,
                         "subset_size": args.kid_subset_size}
        lines.append(f"KID: {kid.mean:.7g} ± {kid.std:.7g}")
    if args.isc:
        made_by = one.stats.meta.get("weights_sha256")
        if made_by != FID_SHA256 and not args.force:
            raise InputError("IS is defined on the published FID network's logits; these come from "
                             f"{one.stats.meta.get('weights', 'unknown weights')} (sha256 {made_by}); pass --force "
                             "to compute it anyway")
        score = inception_score(one.logits_unbiased, splits=args.isc_splits, shuffle=not args.no_shuffle)
        report["isc"] = {"mean": score.mean, "std": score.std, "splits": args.isc_splits,
                         "shuffle": not args.no_shuffle}
        lines.append(f"IS: {score.mean:.7g} ± {score.std:.7g}")
    if args.prc:
        pr: PrecisionRecall = precision_recall(one.features, two.features, k=args.prc_k)
        report["prc"] = dict(pr.__dict__)
        lines.append(f"precision: {pr.precision:.7g}  recall: {pr.recall:.7g}  F: {pr.f_score:.7g}  (k={pr.k}; "
                     "first path generated, second real)")
    if args.prdc:
        dc = density_coverage(one.features, two.features, k=args.prdc_k)
        report["prdc"] = dict(dc.__dict__)
        lines.append(f"density: {dc.density:.7g}  coverage: {dc.coverage:.7g}  (k={dc.k}, as prdc; first path "
                     "generated, second real)")
    if args.heatmaps and is_main_process():
        sensitivity = fid_sensitivity(one.features, two.stats)
        save_heatmaps(args.heatmaps, one.images, one.names, sensitivity, extractor_for(), args.top)
        worst = sensitivity.ranking()[0]
        lines.append(f"heatmaps of the {min(args.top, len(one.names))} images that raise FID most in "
                     f"{display_name(args.heatmaps)} (all {len(one.names)} ranked in contributions.csv; removing "
                     f"{display_name(os.path.basename(one.names[worst]))} changes FID by about "
                     f"{sensitivity.contributions[worst]:+.4g})")
        report["heatmaps"] = {"folder": args.heatmaps, "top": args.top}
    if not is_main_process():
        return 0
    for path, trace in ((first, distance.trace1), (second, distance.trace2)):
        if trace == 0:  # every image gave the same features: the number says nothing about the images
            print(f"warning: every image of {display_name(path)} has the same features (the covariance is zero): "
                  "the network is not telling images apart; check --weights and the images", file=sys.stderr)
    print("\n".join(lines))
    if args.json:
        _write_json(args.json, report, args.overwrite)
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    device = init_distributed() or args.device  # under torchrun: whole batches per process, rank 0 writes
    if not is_main_process():
        args.quiet = True
    model = None
    if args.model:  # without it: the FID network, with --weights in its layout
        from .weights import get_model, resolve_model

        choice = resolve_model(args.model, args.weights)
        model = get_model(choice.name_or_path, choice.pretrained)
    layers = [part for item in args.layers for part in item.split(",") if part]
    features = extract_features(args.folder, layers, preset=args.preset, weights=None if model else args.weights,
                                model=model, batch_size=args.batch_size, workers=args.workers, device=device,
                                skip_bad=args.skip_bad, progress=not args.quiet, backend=args.backend,
                                pytorch_fid_glob=args.pytorch_fid_glob)
    if not is_main_process():
        return 0
    features.save(out, overwrite=args.overwrite)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in features.arrays.items())
    print(f"wrote {out}: {shapes}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(FID_PRESETS),
                   help=f"preprocessing (default {DEFAULT_PRESET}; with --model, the model's own)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=_default_workers(), help="decoding processes (0: in process)")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: cuda when available)")
    p.add_argument("--backend", choices=FEATURE_BACKENDS, default="auto",
                   help="auto (default): OpenVINO on a CPU from 16 images when installed (exported once, cached), "
                   "else eager; eager: PyTorch's exact arithmetic, as the parity checks run")
    p.add_argument("--weights", help="FID weights file in pytorch-fid's layout (default: the published file, "
                   "reused from $TORCH_HOME/hub/checkpoints when there)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--pytorch-fid-glob", action="store_true", help="read exactly the files pytorch-fid reads: "
                   "*.png, *.jpg, ... lower case, not in subfolders (default: every image, recursively, any case)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds ``fid`` and ``features`` to the ``inceptionv3`` command."""
    p = commands.add_parser("fid", help="FID (and KID, IS, precision/recall) between two image folders, .npz "
                            "statistics or saved features")
    p.add_argument("paths", nargs=2, metavar="PATH",
                   help="folder, image array (.npz with arr_0, .npy), .npz statistics or .npz features (first "
                   "generated, second real; with --adm: REF SAMPLE); with --save-stats: the images, then the .npz to "
                   "write")
    _add_common(p)
    p.add_argument("--dims", type=int, choices=(64, 192, 768, 2048), default=2048, help="feature tap")
    p.add_argument("--save-stats", action="store_true", help="write the first folder's statistics to the second "
                   "path (pytorch-fid's form) instead of comparing")
    p.add_argument("--adm", action="store_true", help="the ADM evaluator's Inception Score, FID, sFID, precision "
                   "and recall, with its conventions; the paths are REF SAMPLE in its order (folders, .npz batches "
                   "with arr_0, .npy arrays); with --save-stats, also writes mu_s and sigma_s")
    p.add_argument("--with-images", type=int, default=0, metavar="N", help="with --adm --save-stats: also store the "
                   "first N images as arr_0 (ADM's reference batches hold 10,000), for precision and recall later")
    p.add_argument("--fd-method", choices=FD_METHODS, default="eigh",
                   help="eigh: symmetric eigendecompositions, real (default); sqrtm: pytorch-fid's scipy path")
    p.add_argument("--force", action="store_true", help="compare statistics of different presets or weights; IS "
                   "on weights other than the published FID network's")
    p.add_argument("--json", metavar="OUT", help="write the result and its parts as JSON")
    p.add_argument("--kid", action="store_true", help="also KID (both sides must be folders)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--isc", action="store_true", help="also the Inception Score of the first folder")
    p.add_argument("--isc-splits", type=int, default=10)
    p.add_argument("--no-shuffle", action="store_true", help="IS splits in file order (torch-fidelity shuffles)")
    p.add_argument("--prc", action="store_true", help="also precision and recall (Kynkäänniemi et al.)")
    p.add_argument("--prc-k", type=int, default=3, help="neighbourhood size for --prc")
    p.add_argument("--heatmaps", metavar="DIR", help="also rank every generated image by how much it raises FID "
                   "(DIR/contributions.csv) and draw where, for the --top ones (Kynkäänniemi et al. 2023)")
    p.add_argument("--top", type=int, default=10, help="how many images --heatmaps draws")
    p.add_argument("--prdc", action="store_true", help="also density and coverage (Naeem et al. 2020), as the prdc "
                   "package computes them")
    p.add_argument("--prdc-k", type=int, default=5, help="neighbourhood size for --prdc")
    p.set_defaults(func=_cmd_fid)

    p = commands.add_parser("features", help="write per-image features (any of the taps) to an .npz")
    p.add_argument("folder")
    p.add_argument("--layers", nargs="+", default=["2048"], help=f"taps, any of {', '.join(LAYERS)}")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--model", help="a zoo name or checkpoint instead of the FID network (its own preprocessing)")
    _add_common(p)
    p.set_defaults(func=_cmd_features)
