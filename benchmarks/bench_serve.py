"""Load on ``inceptionv3 serve``: closed-loop clients, an open-loop rate, shedding, a soak, and the in-process
ceiling measured in the same run.

    .venv/bin/python benchmarks/bench_serve.py [--backend auto] [--seconds 20] [--levels 1,2,4,8,16,32]
                                               [--soak-s 600] [--skip-shed]

The server is a real ``inceptionv3 serve`` process on 127.0.0.1 with seeded random weights (speed does not depend
on their values); uploads are the shared real photos as JPEGs. For each level of closed-loop clients (each sends
its next request when the last is answered): requests and images per second, p50/p90/p99/max latency, errors by
status code, the mean batch size and queue wait (from the server's own /metrics), and server and client CPU
seconds per second. The ceiling is ``Classifier.predict`` on the same JPEG bytes and backend, in one process,
at batch sizes 1 to --max-batch; overhead = 1 - served / ceiling (best batch size).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def photos() -> list[bytes]:
    from PIL import Image

    out = []
    for path in sorted((REPO / "tests" / "data" / "images").glob("*.*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            import io

            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024


class Server:
    def __init__(self, weights: Path, backend: str, max_batch: int, queue_size: int, models: int = 1) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # several models: the same weights under the names m0, m1, ... (each its own model and thread)
        served = ["--weights", str(weights)] if models == 1 else [
            arg for i in range(models) for arg in ("--model", f"m{i}={weights}")]
        self.names = [None] if models == 1 else [f"m{i}" for i in range(models)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inceptionv3", "serve", *served, "--backend", backend,
             "--port", str(self.port), "--max-batch", str(max_batch), "--queue-size", str(queue_size),
             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read())
            time.sleep(0.2)
        raise RuntimeError("server not ready in 300 s")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        out = {}
        for name in ("inceptionv3_batch_size_sum", "inceptionv3_batch_size_count",
                     "inceptionv3_queue_wait_seconds_sum", "inceptionv3_queue_wait_seconds_count"):
            # summed over the models' series ({model="..."}): this benchmark serves one
            out[name] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
        return out

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def post_one(client: httpx.AsyncClient, image: bytes, latencies: list[float], codes: Counter,
                   model: str | None = None) -> None:
    """One upload: its status code counted, its latency kept when it succeeded."""
    started = time.monotonic()
    try:
        r = await client.post("/v1/predict" + (f"?model={model}" if model else ""), content=image,
                              headers={"Content-Type": "image/jpeg"})
        codes[r.status_code] += 1
        if r.status_code == 200:
            latencies.append(time.monotonic() - started)
    except httpx.HTTPError as exc:
        codes[type(exc).__name__] += 1


async def closed_loop(base: str, images: list[bytes], clients: int, seconds: float, models=(None,)):
    """Each client sends its next request when its last is answered; client w asks model w mod len(models)."""
    latencies, codes = [], Counter()
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def one(worker: int) -> None:
            i = worker
            while time.monotonic() < end:
                await post_one(client, images[i % len(images)], latencies, codes, models[worker % len(models)])
                i += clients

        await asyncio.gather(*(one(w) for w in range(clients)))
    return latencies, codes


async def open_loop(base: str, images: list[bytes], rate: float, seconds: float):
    latencies, codes = [], Counter()
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=512)) as client:
        tasks, start = [], time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(post_one(client, images[i % len(images)], latencies, codes)))
        await asyncio.gather(*tasks)
    return latencies, codes


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no successes"
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) * 1000
    return f"p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms, max {max(latencies) * 1000:.0f} ms"


def ceiling(weights: Path, backend: str, images: list[bytes], max_batch: int, seconds: float) -> dict[int, float]:
    from inceptionv3.inference import Classifier

    classifier = Classifier(str(weights), backend=backend, device="cpu", expected_images=10_000)
    out = {}
    for batch in sorted({1, 2, 4, max_batch}):
        list(classifier.predict(images[:batch], batch_size=batch))  # warm
        done, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            list(classifier.predict(images * 2, batch_size=batch))
            done += 2 * len(images)
        out[batch] = done / (time.monotonic() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level")
    parser.add_argument("--levels", default="1,2,4,8,16,32")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--soak-s", type=float, default=0.0, help="soak at half capacity for this long (600: 10 min)")
    parser.add_argument("--skip-shed", action="store_true")
    parser.add_argument("--models", type=int, default=1, help="serve this many models (the same weights under "
                        "the names m0, m1, ...; clients spread over them) and report the RSS each adds")
    parser.add_argument("--skip-ceiling", action="store_true", help="load levels only (of the ceiling: 0%%)")
    args = parser.parse_args()
    images = photos()
    from inceptionv3 import InceptionV3

    tmp = Path(tempfile.mkdtemp())
    weights = tmp / "random.pth"
    torch.manual_seed(0)
    torch.save(InceptionV3(init_weights=False).state_dict(), weights)
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    mean_kib = np.mean([len(i) for i in images]) / 1024
    print(f"{os.cpu_count()} CPUs ({model}), torch {torch.__version__}, {len(images)} JPEG photos, mean "
          f"{mean_kib:.0f} KiB")

    best = {0: float("inf")} if args.skip_ceiling else ceiling(weights, args.backend, images, args.max_batch,
                                                                   args.seconds / 2)
    print("in-process ceiling (Classifier.predict, JPEG bytes, decode included): " +
          ", ".join(f"batch {b}: {v:.1f} img/s" for b, v in best.items()))
    top = max(best.values())

    if args.models > 1:  # what each model adds: one model's server, then this one, both warmed up and idle
        one = Server(weights, args.backend, args.max_batch, 64)
        rss_one = rss_mib(one.process.pid)
        one.stop()
    server = Server(weights, args.backend, args.max_batch, 64, args.models)
    if args.models > 1:
        rss = rss_mib(server.process.pid)
        print(f"RSS when ready: 1 model {rss_one:.0f} MiB, {args.models} models {rss:.0f} MiB "
              f"(+{(rss - rss_one) / (args.models - 1):.0f} MiB per model)")
    try:
        capacity = 0.0
        for clients in (int(c) for c in args.levels.split(",")):
            before, cpu0, client0 = server.metrics(), cpu_seconds(server.process.pid), time.process_time()
            start = time.monotonic()
            latencies, codes = asyncio.run(closed_loop(server.base, images, clients, args.seconds, server.names))
            wall = time.monotonic() - start
            after = server.metrics()
            batches = after["inceptionv3_batch_size_count"] - before["inceptionv3_batch_size_count"]
            served = after["inceptionv3_batch_size_sum"] - before["inceptionv3_batch_size_sum"]
            waits = after["inceptionv3_queue_wait_seconds_sum"] - before["inceptionv3_queue_wait_seconds_sum"]
            waited = after["inceptionv3_queue_wait_seconds_count"] - before["inceptionv3_queue_wait_seconds_count"]
            rate = len(latencies) / wall
            capacity = max(capacity, rate)
            errors = {k: v for k, v in codes.items() if k != 200}
            print(f"{clients:>2} clients: {rate:.1f} req/s = img/s ({rate / top:.0%} of the ceiling), "
                  f"{percentiles(latencies)}; errors {errors or 0}; mean batch {served / max(batches, 1):.2f}, "
                  f"queue wait {waits / max(waited, 1) * 1000:.0f} ms; CPU s/s server "
                  f"{(cpu_seconds(server.process.pid) - cpu0) / wall:.2f}, client "
                  f"{(time.process_time() - client0) / wall:.2f}")
        rate = 0.7 * capacity
        latencies, codes = asyncio.run(open_loop(server.base, images, rate, args.seconds))
        print(f"open loop at {rate:.1f} req/s (70% of capacity): {percentiles(latencies)}; codes {dict(codes)}")
        if args.soak_s:
            rss, start = [], time.monotonic()
            while time.monotonic() - start < args.soak_s:
                _, codes = asyncio.run(open_loop(server.base, images, 0.5 * capacity, 10))
                rss.append(rss_mib(server.process.pid))
                bad = {k: v for k, v in codes.items() if k != 200}
                if bad:
                    print(f"soak errors: {bad}")
            print(f"soak {args.soak_s:.0f} s at 50% of capacity: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB "
                  f"(max {max(rss):.0f}, {max(rss) / rss[0] - 1:+.1%} over the first sample)")
    finally:
        server.stop()
    if not args.skip_shed:
        shed = Server(weights, args.backend, args.max_batch, 4)
        try:
            latencies, codes = asyncio.run(open_loop(shed.base, images, 3 * capacity, args.seconds))
            print(f"shedding, --queue-size 4 at 3x capacity ({3 * capacity:.0f} req/s): {dict(codes)}; successes "
                  f"{percentiles(latencies)}")
        finally:
            shed.stop()


if __name__ == "__main__":
    main()
