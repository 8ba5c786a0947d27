"""Whole processes: ``inceptionv3 predict FOLDER --backend auto`` against a plain torchvision-eager script that
decodes and crops the same way (Pillow, resize 342, centre crop 299), on a folder of a few hundred real photos,
alternating in one run.

The target (issue 6): the CLI takes at most half the script's wall time. Both load the same weights file (random
weights with batch-norm statistics measured on the photos, so that activations are realistic: untrained weights
would fill eager PyTorch with slow denormal floats that OpenVINO flushes). Both print the top-5 of every photo;
their top-1 answers are compared too.

    .venv/bin/python benchmarks/bench_folder.py [--copies 12] [--rounds 3] [--backend auto]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from inceptionv3 import InceptionV3
from inceptionv3.files import find_images
from inceptionv3.preprocess import PRESETS

TORCHVISION_SCRIPT = """
import sys
from pathlib import Path

import torch
import torchvision
from PIL import Image

folder, weights = sys.argv[1:3]
model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
transform = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.transforms()
paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
with torch.inference_mode():
    for start in range(0, len(paths), 16):
        chunk = paths[start:start + 16]
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk])
        scores, labels = model(batch).softmax(1).topk(5)
        for path, row_scores, row_labels in zip(chunk, scores.tolist(), labels.tolist()):
            print(path, *(f"{label}:{score:.4f}" for label, score in zip(row_labels, row_scores)), sep=",")
"""


def realistic_weights(photos: list[str], path: Path) -> None:
    """Untrained conv weights with BN statistics measured on real photos, saved in torchvision's layout."""
    torch.manual_seed(0)
    model = InceptionV3()
    preset = PRESETS["torchvision"]
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over this one batch
    model.train()
    with torch.no_grad():
        model(preset.normalize(torch.stack([torch.from_numpy(preset.load(p)) for p in photos[:16]]).numpy()))
    model.fc.weight.data *= 20  # spread the softmax so that top-1 answers mean something
    torch.save(model.eval().state_dict(), path)


def top1_by_path(output: str) -> dict[str, str]:
    return {Path(cells[0]).name: cells[1].split(":")[0] for cells in (line.split(",") for line in output.splitlines())}


def run(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "images"))
    parser.add_argument("--copies", type=int, default=12, help="copies of each photo in the folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    photos = [str(p) for p in find_images(args.images)]
    folder = work / "photos"
    folder.mkdir()
    for copy in range(args.copies):
        for photo in photos:
            shutil.copy(photo, folder / f"{copy:02d}_{Path(photo).name}")
    weights = work / "inception_v3_torchvision_layout.pth"
    realistic_weights(photos, weights)
    (work / "torchvision_eager.py").write_text(TORCHVISION_SCRIPT)
    env = {**os.environ, "INCEPTIONV3_HOME": str(work / "home")}  # an empty cache: the first run exports
    ours = [sys.executable, "-m", "inceptionv3", "predict", str(folder), "--weights", str(weights), "--batch-size",
            "16", "--backend", args.backend, "--quiet", "--format", "csv", "--topk", "5"]
    script = [sys.executable, str(work / "torchvision_eager.py"), str(folder), str(weights)]

    cold, _ = run(ours, env)  # builds and caches the export
    ours_times, script_times = [], []
    for _ in range(args.rounds):
        seconds, our_output = run(ours, env)
        ours_times.append(seconds)
        seconds, script_output = run(script, env)
        script_times.append(seconds)
    ours_top1 = {Path(row["path"]).name: row["pred_label"] for row in csv.DictReader(io.StringIO(our_output))}
    script_top1 = top1_by_path(script_output)
    agree = sum(ours_top1[name] == label for name, label in script_top1.items())
    best_ours, best_script = min(ours_times), min(script_times)
    count = len(photos) * args.copies
    print(f"{count} real photos ({len(photos)} distinct), batch 16, {os.cpu_count()} cores, {args.rounds} rounds")
    print(f"inceptionv3 predict --backend {args.backend}: {best_ours:6.2f} s  "
          f"(rounds: {', '.join(f'{t:.2f}' for t in ours_times)}; first run with an empty cache {cold:.2f} s)")
    print(f"torchvision eager script      : {best_script:6.2f} s  "
          f"(rounds: {', '.join(f'{t:.2f}' for t in script_times)})")
    print(f"speed-up                      : {best_script / best_ours:.2f}x  (target >= 2)")
    print(f"top-1 agreement               : {agree} of {len(script_top1)}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
