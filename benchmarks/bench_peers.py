"""``inceptionv3 serve`` side by side with LitServe, BentoML and KServe's Python ``ModelServer``, each wrapping the
same ``inceptionv3.Classifier``: one command, one table (markdown on stdout, JSON in --out).

    python benchmarks/bench_peers.py --setup          # build (or rebuild) the peers' environment, then stop
    python benchmarks/bench_peers.py [--seconds 20] [--levels 1,4,16,32] [--delays 0,5] [--rate 8]
                                     [--peers inceptionv3,litserve,bentoml,kserve] [--out peers.json]

Environment. The peers never go into the project's .venv: the first run (or ``--setup``) builds
``benchmarks/.peers-venv`` (git-ignored, never committed: about 1.7 GB; 85 s here with pip's cache) with ``venv``:
``torch==2.13.0`` first (a CPU build; the run checks ``torch.version.cuda`` is None), then this repository's
dependencies with its ``serve`` and ``openvino`` extras (read from pyproject.toml), ``httpx``, ``litserve``,
``bentoml`` and ``kserve`` in one resolve, then its ``grpc`` extra held to the grpcio and protobuf that resolve chose
(``pip check`` must pass), and a ``.pth`` file that puts ``src/`` on the
path (no editable install, so nothing is written into the work tree). ``versions.json`` in it records the versions
and the setup time. The script then runs itself, the four servers and the in-process reference with that
environment's Python, so torch, OpenVINO and every shared library are the same for all. HOME points at
``$TMPDIR/bench-peers-home`` for these processes (outside the work tree: BentoML's home, the export cache, the
servers' logs, the default --out, and OpenVINO's telemetry consent file, written as declined), and
BENTOML_DO_NOT_TRACK is set: nothing leaves 127.0.0.1.

What is the same for every server:
  * the checkpoint: seeded random weights with the batch-norm statistics measured on the test photos and a scaled
    head (as the tests' trained-like checkpoint), so that the top 5 differ from photo to photo; speed does not depend
    on the values;
  * the model: ``Classifier(None, weights, backend=--backend, decode="fast")``, warmed up at batch 1 and the
    largest batch before the server reports ready, the OpenVINO export already cached (built by the reference);
  * the threads: OMP/MKL/OpenBLAS at --threads and the process tree pinned to the first --threads CPUs;
  * the payload: every photo of tests/data/images (BMPs and PNGs too) re-encoded as JPEG (quality 90); the top 5
    (class id, label, score) back. Each server takes them as its documentation shows most naturally:
    ``inceptionv3 serve`` JSON ``{"inputs": b64}`` (base64 in JSON, as every peer here, although it also takes
    the raw body), LitServe JSON ``{"image": b64}``, BentoML JSON
    ``{"images": [b64]}`` (a batchable API takes lists), KServe the v1 protocol
    ``{"instances": [{"image": {"b64": b64}}]}``. Bodies are built once, before the load, so that the client's cost
    per request is the same;
  * the batching: at most --max-batch images; a wait of each of --delays ms (``--max-delay-ms``; LitServe's
    ``batch_timeout``). BentoML's adaptive batcher has no wait setting (it picks its own wait from measured
    latencies; ``max_latency_ms`` is a budget past which it answers 503), so it runs once, with the default 60 s
    budget. KServe's Python server has no batcher (batching belongs to a sidecar agent in a cluster): a synchronous
    ``predict`` runs one request at a time, so it runs once too.

For each server: cold start (process start to the first 200 from its readiness route), the top-5 check (every photo,
one request at a time, must give the same five class ids as ``Classifier`` in this process, else the server is
printed with the mismatch and left out of the load), closed-loop clients at each of --levels (each sends its next
request when its last is answered) for --seconds, then an open loop at --rate requests per second; img/s, p50 and
p99 latency of the successes, errors by status, the server tree's CPU seconds per second, and the peak RSS and PSS
of the server's whole process tree (the sum over its processes, sampled every 0.25 s from its start). Glue lines
are the non-blank lines of code of the peer's file under benchmarks/peers/, comments and docstrings left out;
``inceptionv3 serve`` needs none (its flags). The in-process ceiling (``Classifier.predict`` on the same bytes,
batch 1 to --max-batch, with bench_serve.py's ``ceiling``: 4 decoding threads, decode "auto", which is "fast" on
OpenVINO) is measured first. The client shares the machine's CPUs: its CPU seconds per second are reported too.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".peers-venv"
PEERS = BENCH / "peers"
HOME = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-peers-home"  # outside the work tree: caches, logs, results
TORCH = "torch==2.13.0"  # on this machine a local CPU wheel; a plain `torch` would pull a CUDA build of several GB
PEER_PACKAGES = ["litserve", "bentoml", "kserve"]
RECORDED = ["torch", "openvino", "numpy", "fastapi", "uvicorn", "starlette", "pydantic", "httpx", *PEER_PACKAGES]
ALL_PEERS = ("inceptionv3", "litserve", "bentoml", "kserve", "inceptionv3-grpc", "kserve-grpc")


# -- the environment -------------------------------------------------------------------------------------------------

def venv_python() -> Path:
    return VENV / "bin" / "python"


def run(command: list, **kwargs) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def setup() -> dict:
    """Build .peers-venv from nothing; return (and write to versions.json) what it holds and how long it took."""
    import tomllib

    started = time.monotonic()
    if VENV.exists():
        shutil.rmtree(VENV)
    run([sys.executable, "-m", "venv", VENV])
    pip = [venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + [TORCH])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    ours = [d for d in extras["serve"] + extras["openvino"] if not d.startswith("inceptionv3[")]
    run(pip + project["dependencies"] + ours + ["httpx"] + PEER_PACKAGES)
    # Our grpc extra second, held to the grpcio and protobuf that the peers chose: resolved together with them,
    # pip backtracks through grpcio-reflection's releases for many minutes (kserve holds protobuf below 7).
    held = subprocess.run([venv_python(), "-c", "import importlib.metadata as m; "
                           "print(m.version('grpcio'), m.version('protobuf'))"],
                          check=True, capture_output=True, text=True).stdout.split()
    grpc_extra = [d for d in extras["grpc"] if not d.startswith(("inceptionv3[", "grpcio>", "protobuf"))]
    run(pip + grpc_extra + [f"grpcio=={held[0]}", f"protobuf=={held[1]}"])
    site = subprocess.run([venv_python(), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "inceptionv3-src.pth").write_text(f"{REPO / 'src'}\n")
    run([venv_python(), "-m", "pip", "check"])
    probe = ("import importlib.metadata as m, json, torch; print(json.dumps({'cuda': torch.version.cuda, "
             f"'versions': {{n: m.version(n) for n in {RECORDED!r}}}}}))")
    found = json.loads(subprocess.run([venv_python(), "-c", probe], check=True, capture_output=True,
                                      text=True).stdout)
    if found["cuda"] is not None:
        print(f"warning: torch in {VENV} is a CUDA build ({found['cuda']}); the CPU-only wheel was not found")
    record = {"setup_s": round(time.monotonic() - started, 1), "python": platform.python_version(),
              "torch_cuda": found["cuda"], "versions": found["versions"]}
    (VENV / "versions.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"built {VENV} in {record['setup_s']} s: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    return record


def quiet_home() -> dict[str, str]:
    """The variables every process of the run gets: a private HOME (BentoML's home, the export cache, and
    OpenVINO's telemetry consent, declined) and BentoML's tracking off."""
    consent = HOME / "intel" / "openvino_telemetry"
    consent.parent.mkdir(parents=True, exist_ok=True)
    consent.write_text("0")
    return {"HOME": str(HOME), "INCEPTIONV3_HOME": str(HOME / "inceptionv3"), "BENTOML_HOME": str(HOME / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true", "PYTHONDONTWRITEBYTECODE": "1"}


# -- measuring a process tree ----------------------------------------------------------------------------------------

def tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def tree_memory(pids: list[int]) -> tuple[float, float]:
    """Summed RSS and PSS in MiB (PSS shares each page among the processes that map it)."""
    rss = pss = 0
    for pid in pids:
        if match := re.search(r"VmRSS:\s+(\d+) kB", _read(f"/proc/{pid}/status")):
            rss += int(match.group(1))
        if match := re.search(r"^Pss:\s+(\d+) kB", _read(f"/proc/{pid}/smaps_rollup"), re.M):
            pss += int(match.group(1))
    return rss / 1024, pss / 1024


def tree_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        if text := _read(f"/proc/{pid}/stat"):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Peak summed RSS and PSS of a process tree, every ``interval`` seconds until stopped."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            rss, pss = tree_memory(tree(self.root))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)


def glue_lines(path: Path) -> int:
    """Non-blank lines holding code: comments and docstrings left out."""
    source = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
            tokenize.ENDMARKER}
    lines: set[int] = set()
    for token in tokenize.tokenize(io.BytesIO(source.encode()).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


# -- the peers -------------------------------------------------------------------------------------------------------

def b64(jpeg: bytes) -> str:
    return base64.b64encode(jpeg).decode("ascii")


@dataclass
class Peer:
    name: str
    glue: str | None  # file under benchmarks/peers/
    route: str
    ready_route: str
    payload: str
    body: object  # jpeg bytes -> (body bytes, content type)
    top5: object  # parsed JSON answer -> [(class id, label, score)]
    delays: object  # the --delays list -> the settings this peer runs under (a list of labels)
    grpc: bool = False  # the load goes to the v2 gRPC ModelInfer (readiness is still asked over HTTP)

    def command(self, weights: Path, backend: str, port: int, max_batch: int, delay: str) -> list[str]:
        python = str(venv_python())
        if self.name.startswith("inceptionv3"):
            grpc = ["--grpc-port", str(port + 1)] if self.grpc else []
            return [python, "-m", "inceptionv3", "serve", "--weights", str(weights), "--backend", backend,
                    "--decode", "fast", "--max-batch", str(max_batch), "--max-delay-ms", delay, "--host",
                    "127.0.0.1", "--port", str(port), "--log-level", "warning", *grpc]
        if self.name == "bentoml":
            return [str(VENV / "bin" / "bentoml"), "serve", "serve_bentoml:InceptionV3", "--working-dir", str(PEERS),
                    "--host", "127.0.0.1", "--port", str(port)]
        return [python, str(PEERS / self.glue)]


def _json(document: object) -> tuple[bytes, str]:
    return json.dumps(document).encode(), "application/json"


def _top(items: list[dict]) -> list[tuple[int, str, float]]:
    return [(int(p["class_id"]), p["label"], float(p["score"])) for p in items]


def _infer_request(jpeg: bytes) -> tuple[bytes, str]:
    """A v2 ``ModelInferRequest`` (serialized once): one BYTES image as raw contents, Triton's classification 5."""
    from inceptionv3.serve import protos

    request = protos.message("inference.ModelInferRequest")(model_name="inceptionv3")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 5
    return request.SerializeToString(), "grpc"


def _grpc_top(response) -> list[tuple[int, str, float]]:
    """The first image's top 5 from a ``ModelInferResponse``: BYTES "score:index:label", raw or in contents."""
    if response.raw_output_contents:
        raw, items, offset = response.raw_output_contents[0], [], 0
        while offset < len(raw):
            length = int.from_bytes(raw[offset:offset + 4], "little")
            items.append(raw[offset + 4:offset + 4 + length])
            offset += 4 + length
    else:
        items = list(response.outputs[0].contents.bytes_contents)
    out = []
    for item in items[:5]:
        score, label, name = item.decode().split(":", 2)
        out.append((int(label), name, float(score)))
    return out


PEER_TABLE = {
    "inceptionv3": Peer("inceptionv3", None, "/v1/predict?topk=5", "/readyz", 'JSON {"inputs": b64}',
                        lambda jpeg: _json({"inputs": b64(jpeg)}), lambda r: _top(r["predictions"]),
                        lambda delays: [f"{d} ms" for d in delays]),
    "litserve": Peer("litserve", "serve_litserve.py", "/predict", "/health", 'JSON {"image": b64}',
                     lambda jpeg: _json({"image": b64(jpeg)}), lambda r: _top(r["predictions"]),
                     lambda delays: [f"{d} ms" for d in delays]),
    "bentoml": Peer("bentoml", "serve_bentoml.py", "/predict", "/readyz", 'JSON {"images": [b64]}',
                    lambda jpeg: _json({"images": [b64(jpeg)]}), lambda r: _top(r[0]["predictions"]),
                    lambda delays: ["adaptive"]),
    "kserve": Peer("kserve", "serve_kserve.py", "/v1/models/inceptionv3:predict", "/v1/models/inceptionv3",
                   'v1 JSON {"instances": [{"image": {"b64": b64}}]}',
                   lambda jpeg: _json({"instances": [{"image": {"b64": b64(jpeg)}}]}),
                   lambda r: _top(r["predictions"][0]), lambda delays: ["none"]),
    # the v2 protocol over gRPC: the same ModelInferRequest bytes to both
    "inceptionv3-grpc": Peer("inceptionv3-grpc", None, "ModelInfer", "/readyz", "gRPC v2, raw BYTES",
                             _infer_request, _grpc_top, lambda delays: [f"{d} ms" for d in delays], grpc=True),
    "kserve-grpc": Peer("kserve-grpc", "serve_kserve.py", "ModelInfer", "/v1/models/inceptionv3",
                        "gRPC v2, raw BYTES", _infer_request, _grpc_top, lambda delays: ["none"], grpc=True),
}


@dataclass
class Running:
    peer: Peer
    batching: str
    process: subprocess.Popen
    base: str
    log: Path
    sampler: Sampler
    cold_start_s: float = 0.0
    bodies: list[tuple[bytes, str]] = field(default_factory=list)
    grpc_target: str | None = None

    def pids(self) -> list[int]:
        return tree(self.process.pid)

    def stop(self) -> None:
        self.sampler.done.set()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        try:  # stragglers that left the group's leader behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(peer: Peer, batching: str, args, weights: Path, workdir: Path, env: dict[str, str]) -> Running:
    import httpx
    from bench_serve import free_port

    port = free_port()
    while peer.grpc and not _free(port + 1):  # gRPC on the next port
        port = free_port()
    delay = batching.removesuffix(" ms") if batching.endswith(" ms") else "0"
    env = {**env, "BENCH_WEIGHTS": str(weights), "BENCH_BACKEND": args.backend, "BENCH_PORT": str(port),
           "BENCH_GRPC_PORT": str(port + 1) if peer.grpc else "",
           "BENCH_MAX_BATCH": str(args.max_batch), "BENCH_DELAY_MS": delay}
    log = workdir / f"{peer.name}-{batching.replace(' ', '')}.log"
    with open(log, "wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(peer.command(weights, args.backend, port, args.max_batch, delay), cwd=workdir,
                                   env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # the CPUs: this process's, which it inherits
    sampler = Sampler(process.pid)
    sampler.start()
    running = Running(peer, batching, process, f"http://127.0.0.1:{port}", log, sampler,
                      grpc_target=f"127.0.0.1:{port + 1}" if peer.grpc else None)
    deadline = started + args.start_timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(running.base + peer.ready_route, timeout=2).status_code == 200:
                running.cold_start_s = time.monotonic() - started
                return running
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.05)
    running.stop()
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{peer.name} ({batching}) did not become ready (exit {process.poll()}):\n{tail}")


# -- load ------------------------------------------------------------------------------------------------------------

class Sender:
    """One client connection pool for a server: ``post`` sends a prebuilt body and gives (status, answer), the
    answer parsed only when asked (the load does not pay for parsing). HTTP through httpx; gRPC through grpc.aio
    with the bytes already serialized, to ``inference.GRPCInferenceService/ModelInfer``."""

    def __init__(self, server: Running, connections: int) -> None:
        self.server = server
        if server.peer.grpc:
            import grpc

            from inceptionv3.serve import protos

            self.grpc = grpc
            self.channel = grpc.aio.insecure_channel(server.grpc_target)
            self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                                 request_serializer=lambda body: body,
                                                 response_deserializer=protos.message(
                                                     "inference.ModelInferResponse").FromString)
        else:
            import httpx

            self.client = httpx.AsyncClient(base_url=server.base, timeout=60,
                                            limits=httpx.Limits(max_connections=connections))

    async def post(self, body: tuple[bytes, str], parse: bool = False):
        if self.server.peer.grpc:
            try:
                return 200, await self.call(body[0], timeout=60)
            except self.grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details()
        import httpx

        try:
            r = await self.client.post(self.server.peer.route, content=body[0], headers={"Content-Type": body[1]})
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        return r.status_code, (r.json() if parse and r.status_code == 200 else r.text[:200] if parse else None)

    async def close(self) -> None:
        await (self.channel.close() if self.server.peer.grpc else self.client.aclose())


async def post_one(sender: Sender, body: tuple[bytes, str], latencies: list[float], codes: Counter) -> None:
    started = time.monotonic()
    status, _ = await sender.post(body)
    codes[status] += 1
    if status == 200:
        latencies.append(time.monotonic() - started)


async def closed_loop(server: Running, clients: int, seconds: float):
    latencies, codes = [], Counter()
    end = time.monotonic() + seconds
    sender = Sender(server, clients + 4)

    async def one(worker: int) -> None:
        i = worker
        while time.monotonic() < end:
            await post_one(sender, server.bodies[i % len(server.bodies)], latencies, codes)
            i += clients

    try:
        await asyncio.gather(*(one(w) for w in range(clients)))
    finally:
        await sender.close()
    return latencies, codes


async def open_loop(server: Running, rate: float, seconds: float):
    latencies, codes = [], Counter()
    sender = Sender(server, 512)
    try:
        tasks, start_at = [], time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start_at + i / rate - time.monotonic()))
            body = server.bodies[i % len(server.bodies)]
            tasks.append(asyncio.create_task(post_one(sender, body, latencies, codes)))
        await asyncio.gather(*tasks)
    finally:
        await sender.close()
    return latencies, codes


def measure(server: Running, label: str, load) -> dict:
    import numpy as np

    pids = server.pids()
    cpu0, client0, started = tree_cpu(pids), time.process_time(), time.monotonic()
    latencies, codes = asyncio.run(load)
    wall = time.monotonic() - started
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if latencies else (None, None)
    return {"load": label, "img_s": len(latencies) / wall, "p50_ms": p50, "p99_ms": p99,
            "errors": {str(k): v for k, v in codes.items() if k != 200},
            "server_cpu_s_per_s": (tree_cpu(server.pids()) - cpu0) / wall,
            "client_cpu_s_per_s": (time.process_time() - client0) / wall}


def check_top5(server: Running, names: list[str], reference: list[list[tuple[int, str, float]]]) -> list[str]:
    """One request at a time; the differences from the in-process top 5, one line each (empty: all agree)."""

    async def check() -> list[str]:
        problems = []
        sender = Sender(server, 4)
        try:
            for name, body, expected in zip(names, server.bodies, reference, strict=True):
                status, answer = await sender.post(body, parse=True)
                if status != 200:
                    problems.append(f"{name}: {status}: {answer}")
                    continue
                got = server.peer.top5(answer)
                if [g[0] for g in got] != [e[0] for e in expected]:
                    problems.append(f"{name}: top-5 ids {[g[0] for g in got]}, in-process {[e[0] for e in expected]}")
        finally:
            await sender.close()
        return problems

    return asyncio.run(check())


# -- the run ---------------------------------------------------------------------------------------------------------

def write_checkpoint(path: Path, images: list[bytes]) -> None:
    """Seeded random weights, batch-norm statistics measured on the photos, the head scaled by 20."""
    import numpy as np
    import torch

    from inceptionv3 import InceptionV3
    from inceptionv3.inference import Classifier

    torch.manual_seed(0)
    model = InceptionV3(init_weights=False)
    views = Classifier(model, backend="eager", device="cpu", decode="fast")
    batch = views.preprocess.normalize(np.concatenate([views.load_views(jpeg, "<photo>") for jpeg in images]))
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
            module.bias.data = torch.randn(module.num_features, generator=generator) * 0.2
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
    model.fc.weight.data *= 20
    torch.save(model.state_dict(), path)


def photos() -> tuple[list[str], list[bytes]]:
    """Every photo of tests/data/images (bench_serve's list, and the BMPs), re-encoded as JPEG at quality 90."""
    from PIL import Image

    names, out = [], []
    for path in sorted((REPO / "tests" / "data" / "images").glob("*.*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
            names.append(path.name)
            out.append(buffer.getvalue())
    return names, out


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    out = [f"## Serving peers: {s['cpu']}, {s['threads']} threads, backend {s['backend']}, max batch "
           f"{s['max_batch']}, {s['photos']} JPEG photos",
           "", "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
           "in-process ceiling (Classifier.predict, JPEG bytes): " + ", ".join(
               f"batch {b}: {v:.1f} img/s" for b, v in report["ceiling"].items()), "",
           "| server | batching | payload | glue lines | cold start s | peak RSS MiB | peak PSS MiB | top-5 check |",
           "|---|---|---|---:|---:|---:|---:|---|"]
    for r in report["runs"]:
        check = "same as in-process" if r["top5_ok"] else (r.get("failure") or f"{len(r['mismatches'])} mismatches")
        out.append(f"| {r['peer']} | {r['batching']} | {r['payload']} | {r['glue_lines']} | "
                   f"{fmt(r.get('cold_start_s'), 1)} | {fmt(r.get('peak_rss_mib'))} | {fmt(r.get('peak_pss_mib'))} | "
                   f"{check} |")
    out += ["", "| server | batching | load | img/s | p50 ms | p99 ms | errors | server CPU s/s | client CPU s/s |",
            "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in report["runs"]:
        for m in r.get("loads", []):
            errors = ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "0"
            out.append(f"| {r['peer']} | {r['batching']} | {m['load']} | {m['img_s']:.1f} | {fmt(m['p50_ms'])} | "
                       f"{fmt(m['p99_ms'])} | {errors} | {m['server_cpu_s_per_s']:.2f} | "
                       f"{m['client_cpu_s_per_s']:.2f} |")
    return "\n".join(out)


def benchmark(args) -> None:
    import tempfile

    import torch
    from bench_serve import ceiling

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEER_TABLE)
    if unknown:
        sys.exit(f"--peers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ALL_PEERS)}")
    levels = [int(c) for c in args.levels.split(",")]
    delays = [d.strip() for d in args.delays.split(",")]
    if args.backend == "auto":
        import importlib.util

        args.backend = "openvino" if importlib.util.find_spec("openvino") else "eager"
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                               "OPENBLAS_NUM_THREADS")}}
    torch.set_num_threads(args.threads)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])  # the reference and ceiling too
    names, images = photos()
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=HOME))
    weights = workdir / "trained_like.pth"
    write_checkpoint(weights, images)

    from inceptionv3.inference import Classifier

    # the reference, which also builds the export cache every server then loads
    classifier = Classifier(None, str(weights), device="cpu", backend=args.backend, expected_images=10_000,
                            decode="fast")
    reference = [classifier.predict_views([classifier.load_views(jpeg, name)], batch_size=1)[0].topk(
        5, classifier.class_names) for jpeg, name in zip(images, names, strict=True)]
    del classifier
    best = ceiling(weights, args.backend, images, args.max_batch, max(1.0, args.seconds / 4))
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    record = json.loads((VENV / "versions.json").read_text())
    report = {"settings": {"cpu": f"{os.cpu_count()} CPUs ({cpu.group(1) if cpu else platform.machine()})",
                           "threads": args.threads, "backend": args.backend, "max_batch": args.max_batch,
                           "photos": len(images), "seconds": args.seconds, "levels": levels, "delays": delays,
                           "rate": args.rate, "decode": "fast"},
              "versions": {"inceptionv3": __import__("inceptionv3").__version__, **record["versions"]},
              "setup_s": record["setup_s"], "ceiling": {str(b): v for b, v in best.items()}, "runs": []}
    print(f"{report['settings']['cpu']}; backend {args.backend}; {args.threads} threads; in-process ceiling "
          + ", ".join(f"batch {b}: {v:.1f} img/s" for b, v in best.items()), flush=True)

    for name in peers:
        peer = PEER_TABLE[name]
        for batching in peer.delays(delays):
            result = {"peer": name, "batching": batching, "payload": peer.payload, "top5_ok": False,
                      "glue_lines": glue_lines(PEERS / peer.glue) if peer.glue else 0}
            report["runs"].append(result)
            try:
                server = start(peer, batching, args, weights, workdir, env)
            except RuntimeError as exc:
                print(f"{name} ({batching}): could not start; left out\n{exc}", flush=True)
                result["failure"] = "did not start"
                continue
            try:
                server.bodies = [peer.body(jpeg) for jpeg in images]
                result["cold_start_s"] = server.cold_start_s
                result["mismatches"] = check_top5(server, names, reference)
                result["top5_ok"] = not result["mismatches"]
                if result["mismatches"]:
                    print(f"{name} ({batching}): top 5 differ from the in-process Classifier; left out:\n  "
                          + "\n  ".join(result["mismatches"]), flush=True)
                    continue
                result["loads"] = []
                for clients in levels:
                    m = measure(server, f"{clients} clients", closed_loop(server, clients, args.seconds))
                    result["loads"].append(m)
                    print(f"{name} ({batching}) {m['load']}: {m['img_s']:.1f} img/s, p50 {fmt(m['p50_ms'])} ms, "
                          f"p99 {fmt(m['p99_ms'])} ms, errors {m['errors'] or 0}", flush=True)
                if args.rate > 0:
                    m = measure(server, f"open {args.rate:g}/s", open_loop(server, args.rate, args.seconds))
                    result["loads"].append(m)
                    print(f"{name} ({batching}) {m['load']}: {m['img_s']:.1f} img/s, p50 {fmt(m['p50_ms'])} ms, "
                          f"p99 {fmt(m['p99_ms'])} ms, errors {m['errors'] or 0}", flush=True)
            finally:
                server.stop()
                result["peak_rss_mib"], result["peak_pss_mib"] = server.sampler.peak_rss, server.sampler.peak_pss
            print(f"{name} ({batching}): cold start {server.cold_start_s:.1f} s, peak RSS "
                  f"{server.sampler.peak_rss:.0f} MiB (PSS {server.sampler.peak_pss:.0f})", flush=True)
    table = markdown(report)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    if all(r["top5_ok"] for r in report["runs"]):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"the servers' logs are in {workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help=f"(re)build {VENV.name} and stop")
    parser.add_argument("--peers", default=",".join(ALL_PEERS))
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level")
    parser.add_argument("--levels", default="1,4,16,32", help="closed-loop clients")
    parser.add_argument("--delays", default="0,5", help="batch waits in ms (inceptionv3 serve and LitServe)")
    parser.add_argument("--rate", type=float, default=8.0, help="open-loop requests per second (0: none)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--backend", default="auto", help="auto: openvino when installed, else eager")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch/OpenMP threads and CPUs each server is pinned to")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for a server's ready")
    parser.add_argument("--out", default=str(HOME / "results.json"), help="the JSON report ('' for none)")
    args = parser.parse_args()
    if Path(sys.prefix).resolve() != VENV.resolve():
        if args.setup or not (VENV / "versions.json").exists():
            setup()
        if args.setup:
            return
        argv = [str(venv_python()), str(Path(__file__).resolve()), *sys.argv[1:]]
        os.execve(argv[0], argv, {**os.environ, **quiet_home()})
    if args.setup:
        sys.exit("--setup runs from outside the peers' environment")
    sys.path.insert(0, str(BENCH))
    os.environ.update(quiet_home())
    benchmark(args)


if __name__ == "__main__":
    main()
