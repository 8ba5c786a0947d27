"""One image on the CLI against a script that calls mmpretrain's ``inference_model`` once: whole processes, same
checkpoint file, same photo, alternating in one run.

The target (issue 6): ``inceptionv3 predict IMAGE --weights F`` takes at most half the script's wall time. It
needs mmpretrain importable beside the project, which is never a project dependency: build a throwaway venv as
the README says (torch, torchvision, ``pip install --no-deps mmpretrain==1.2.0 mmcv-lite==2.2.0``, then
mmengine and friends), ``pip install --no-deps -e .`` into it, and run this file with that venv's Python.

    /tmp/mmenv/bin/python benchmarks/bench_one_image.py [--image demo/bird.jpg] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from inceptionv3 import InceptionV3
from inceptionv3.weights import imagenet_classes

MMPRETRAIN_SCRIPT = """
import sys
from mmpretrain import inference_model

result = inference_model("inception-v3_3rdparty_8xb32_in1k", sys.argv[1], pretrained=sys.argv[2])
print(result["pred_label"], result["pred_class"], result["pred_score"])
"""


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "demo" / "bird.jpg"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    checkpoint = work / "mmpretrain_layout.pth"  # mmpretrain's layout: backbone.*, fc inside the backbone
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in InceptionV3().eval().state_dict().items()},
                "meta": {"dataset_meta": {"classes": list(imagenet_classes())}}}, checkpoint)
    (work / "mmpretrain_once.py").write_text(MMPRETRAIN_SCRIPT)
    ours = [sys.executable, "-m", "inceptionv3", "predict", args.image, "--weights", str(checkpoint), "--format",
            "csv"]
    theirs = [sys.executable, str(work / "mmpretrain_once.py"), args.image, str(checkpoint)]

    timed(ours), timed(theirs)  # cold: the page cache and Python's bytecode cache
    ours_times, theirs_times = [], []
    for _ in range(args.rounds):
        seconds, our_output = timed(ours)
        ours_times.append(seconds)
        seconds, their_output = timed(theirs)
        theirs_times.append(seconds)
    our_label = our_output.splitlines()[1].split(",")[1]
    their_label = their_output.strip().splitlines()[-1].split()[0]  # after mmpretrain's own log line
    ours_median, theirs_median = statistics.median(ours_times), statistics.median(theirs_times)
    print(f"inceptionv3 predict     : {ours_median:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in ours_times)})")
    print(f"mmpretrain script       : {theirs_median:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in theirs_times)})")
    print(f"ratio                   : {ours_median / theirs_median:.2f}  (target <= 0.5)")
    print(f"same top-1              : {our_label == their_label} ({our_label})")


if __name__ == "__main__":
    main()
