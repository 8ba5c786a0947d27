"""Camera-size photos: the exact decode against the fast one (JPEG DCT scaling), per preset, and end to end.

    .venv/bin/python benchmarks/bench_camera.py [--images 200] [--backend auto] [--skip-accuracy]

The folder is made at run time from the shared real photos, upscaled (bicubic) to 4000 x 3000 and 3024 x 4032
JPEGs at quality 92. One run prints:

1. per preset, on 24 of those images: decode + resize + crop time per image, exact and fast; the mean and max
   absolute difference of the 299 crops in grey levels; and how often the top-1 of a trained-like model (seeded
   random weights, BN calibrated on the photos, head scaled so that predictions differ) changes;
2. end to end on the whole folder: ``Classifier.predict`` with ``decode="fast"`` and the chosen backend, against
   the model alone on ready tensors (the same backend and batch size), and against a plain torchvision script
   (Pillow decode, Resize(342), CenterCrop(299), ToTensor, Normalize, eager fp32, batch 16), and the exact decode
   against that script too;
3. peak RSS of ``inceptionv3 predict --decode fast`` on the folder and on the folder repeated 10 times (a list of
   paths: streaming, so it stays flat).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inceptionv3 import InceptionV3
from inceptionv3.decode import load_image
from inceptionv3.inference import Classifier
from inceptionv3.preprocess import PRESETS

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, count: int) -> list[Path]:
    photos = sorted(p for p in (REPO / "tests" / "data" / "images").glob("*.*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = []
    for i in range(count):
        size = (4000, 3000) if i % 2 == 0 else (3024, 4032)
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            Image.open(photos[i % len(photos)]).convert("RGB").resize(size, Image.BICUBIC).save(path, quality=92)
        out.append(path)
    return out


def trained_like(preset_name: str) -> InceptionV3:
    torch.manual_seed(0)
    model = InceptionV3(init_weights=False)
    preset = PRESETS[preset_name]
    photos = sorted((REPO / "tests" / "data" / "images").glob("*.jpg"))[:6]
    batch = preset.batch([str(p) for p in photos])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(batch)
    model.fc.weight.data *= 20
    return model.eval()


def per_preset(files: list[Path]) -> None:
    print("preset            decode+crop ms/img exact  fast   speed-up  crop diff mean/max (grey)  top-1 changed")
    for name, preset in PRESETS.items():
        model = trained_like(name)
        crops = {}
        times = {}
        for mode, min_side in (("exact", None), ("fast", preset.min_decode_side())):
            start = time.perf_counter()
            crops[mode] = np.stack([preset.crop_image(load_image(f, decoder=preset.decoder, min_side=min_side))
                                    for f in files])
            times[mode] = (time.perf_counter() - start) / len(files) * 1000
        diff = np.abs(crops["exact"].astype(int) - crops["fast"].astype(int))
        with torch.inference_mode():
            top = {mode: model(preset.normalize(c)).argmax(1) for mode, c in crops.items()}
        changed = int((top["exact"] != top["fast"]).sum())
        print(f"{name:<17} {times['exact']:>22.0f} {times['fast']:>6.0f} {times['exact'] / times['fast']:>8.1f}x"
              f"  {diff.mean():>14.2f} / {diff.max():<3d}          {changed}/{len(files)}")


def images_per_second(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def end_to_end(files: list[Path], backend: str, batch: int) -> None:
    import torchvision.transforms as T

    classifier = Classifier("inception_v3.tv_in1k", pretrained=False, backend=backend, device="cpu", decode="fast",
                            batch_size=batch, expected_images=len(files))
    exact = Classifier(classifier.model, backend=classifier.backend, device="cpu", decode="exact", batch_size=batch,
                       expected_images=len(files))
    ready = torch.randn(batch, 3, 299, 299)
    classifier.scores(ready)  # warm (OpenVINO's first run, compile)
    batches = max(1, len(files) // batch)
    model_only = images_per_second(lambda: [classifier.scores(ready) for _ in range(batches)], batches * batch)
    fast = images_per_second(lambda: list(classifier.predict(files)), len(files))
    exact_rate = images_per_second(lambda: list(exact.predict(files)), len(files))
    transform = T.Compose([T.Resize(342), T.CenterCrop(299), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    eager = InceptionV3(init_weights=False).eval()

    def torchvision_script() -> None:
        for i in range(0, len(files), 16):
            x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + 16]])
            with torch.inference_mode():
                eager(x)

    script = images_per_second(torchvision_script, len(files))
    sweep = {}
    for workers in (1, 2, 4):
        other = Classifier(classifier.model, backend=classifier.backend, device="cpu", decode="fast",
                           batch_size=batch, workers=workers, expected_images=len(files))
        other.scores(ready)
        sweep[workers] = images_per_second(lambda other=other: list(other.predict(files)), len(files))
    print(f"backend {classifier.backend} {classifier.precision}, batch {batch}, {len(files)} camera JPEGs, "
          f"{classifier.workers} decode threads:")
    print(f"  model alone on ready tensors       {model_only:6.1f} img/s")
    print(f"  predict, decode fast               {fast:6.1f} img/s  ({fast / model_only:.0%} of model-only)")
    print(f"  predict, decode exact              {exact_rate:6.1f} img/s  ({exact_rate / model_only:.0%})")
    print(f"  torchvision script (PIL, eager)    {script:6.1f} img/s  (fast is {fast / script:.1f}x, exact "
          f"{exact_rate / script:.1f}x)")
    print("  decode threads, fast: " + ", ".join(f"{w}: {v:.1f} img/s" for w, v in sweep.items()))


def peak_rss(paths_file: Path, weights: Path) -> float:
    code = ("import resource, sys; from inceptionv3.cli import main; "
            f"main(['predict', '-', '--model', 'inception_v3.tv_in1k', '--weights', '{weights}', '--decode', 'fast', "
            "'--output', '/dev/null', '--format', 'csv', '--quiet', '--allow-failures']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)")
    with open(paths_file) as stdin:
        done = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, check=True)
    return float(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    print(f"{cpu.group(1) if cpu else '?'}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    folder = Path(tempfile.gettempdir()) / "inceptionv3-camera"
    folder.mkdir(exist_ok=True)
    start = time.perf_counter()
    files = make_folder(folder, args.images)
    print(f"{len(files)} JPEGs (4000 x 3000 and 3024 x 4032, quality 92) in {folder} "
          f"({time.perf_counter() - start:.0f} s to make)")
    if not args.skip_accuracy:
        per_preset(files[:24])
    end_to_end(files, args.backend, args.batch_size)
    if not args.skip_rss:
        weights = folder / "random.pth"
        torch.save(InceptionV3(init_weights=False).state_dict(), weights)
        one, ten = folder / "paths1.txt", folder / "paths10.txt"
        one.write_text("".join(f"{f}\n" for f in files))
        ten.write_text("".join(f"{f}\n" for f in files) * 10)
        print(f"peak RSS of predict --decode fast: {peak_rss(one, weights):.0f} MiB for {len(files)} images, "
              f"{peak_rss(ten, weights):.0f} MiB for {10 * len(files)}")


if __name__ == "__main__":
    main()
