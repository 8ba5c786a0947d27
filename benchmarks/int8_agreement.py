"""int8 against fp32 on a real trained model: top-1 agreement and accuracy on the run's own held-out split.

The target (issue 6): report the top-1 agreement of the int8 model with fp32 and never make int8 a default below
99 %. This takes a training run directory (``inceptionv3 train ... --out RUN``), rebuilds its held-out split from
``config.json``, quantises, and compares. OpenVINO (default) calibrates NNCF on images of the training split
(never the held-out ones); LiteRT's dynamic-range int8 needs no calibration.

    .venv/bin/python benchmarks/int8_agreement.py runs/digits [--format openvino|litert] [--calibration-images 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from inceptionv3 import get_model
from inceptionv3.data import load_dataset, split_dataset
from inceptionv3.export import export_model, load_runner, quantize_openvino


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run directory with config.json and best.safetensors")
    parser.add_argument("--format", choices=("openvino", "litert"), default="openvino")
    parser.add_argument("--calibration-images", type=int, default=300)
    args = parser.parse_args()

    config = json.loads((args.run / "config.json").read_text())
    if not config.get("val_split"):
        raise SystemExit(f"{args.run}: this run has no held-out split (val_split) to measure on")
    model = get_model(args.run / "best.safetensors")
    preset = model.weights_info.preprocess
    dataset = load_dataset(config["data"], label_by=config.get("label_by", "alphabet"))
    train, held_out = split_dataset(dataset, config["val_split"], seed=config["seed"])
    picks = np.random.default_rng(0).choice(len(train.items), min(args.calibration_images, len(train.items)),
                                            replace=False)
    calibration = preset.batch([train.items[i] for i in picks])
    images, labels = preset.batch(held_out.items), np.array(held_out.labels)

    work = Path(tempfile.mkdtemp())
    if args.format == "openvino":
        fp32 = export_model(model, "openvino", work / "fp32.xml", example=images[:2], dynamic_batch=True)
        int8 = quantize_openvino(fp32, calibration, work / "int8.xml")
        used = f"{len(picks)} calibration images from the training split"
    else:
        int8 = export_model(model, "litert", work / "int8.tflite", example=images[:1], precision="int8")
        used = "dynamic-range int8, no calibration"
    with torch.no_grad():
        eager = model(images).argmax(1).numpy()
    quantized = load_runner(int8, args.format)(images).argmax(1).numpy()
    agree = int((quantized == eager).sum())
    print(f"{args.run}: {args.format}, {len(labels)} held-out images, {used}")
    print(f"top-1 agreement int8 vs fp32: {agree} of {len(labels)} = {100 * agree / len(labels):.1f} %")
    print(f"accuracy: fp32 {100 * (eager == labels).mean():.2f} %, int8 {100 * (quantized == labels).mean():.2f} %")


if __name__ == "__main__":
    main()
