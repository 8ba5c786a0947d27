"""Every shell and Python block of README.md and docs/*.md runs as a reader would type it.

A scratch folder stands in for the reader's: photos from tests/data are ``photo.jpg``, ``my_photo.jpg``, ``a.jpg``,
``b.png``, ``photos/``, ``generated/`` and ``real/`` (and, as ADM batches, ``samples.npz`` and
``VIRTUAL_imagenet256_labeled.npz``); checkpoints built here in each source's exact layout are the
``/data/...`` files (read as ``data/...`` in the scratch folder). The cache holds the zoo's files, built here in
their sources' layouts and seeded the way a verified download leaves them (the file and its ``.verified``
marker), since the real files cannot be downloaded here; nothing leaves 127.0.0.1.

``inceptionv3`` commands run in this process through ``cli.main`` (the same entry point as the installed command),
``inceptionv3 serve`` in a process of its own, and ``curl`` against it. A block that cannot run here says why in
the doc source, on the line before its fence: ``<!-- not run by the docs tests: REASON -->``. Those blocks are
counted and listed at the end of the run; nothing is skipped silently. A command that a doc shows failing ends in
``# exits N: "TEXT"``: it must exit N and print TEXT.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_DATA, free_port, photo_paths, wait_ready
from PIL import Image

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = {"bash": "shell", "python": "python"}
NOT_CODE = {"text", "yaml", "json", "diff"}  # diffs: tests/test_architecture.py checks them against the code
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- not run by the docs tests: (.+?) -->\s*$")
SHOWN_FAILURE = re.compile(r'#\s*exits (\d+): "([^"]+)"')  # a command a doc shows failing, and what it prints


@dataclass
class Block:
    path: Path
    line: int
    language: str
    code: str
    reason: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            blocks.append(Block(path, text[:match.start()].count("\n") + 1, match.group(1), match.group(2),
                                marker.group(1) if marker else None))
    return blocks


BLOCKS = doc_blocks()
RUNNABLE = [b for b in BLOCKS if b.language in CODE and b.reason is None]


def not_run_summary() -> str:
    """For the end of the run (conftest prints it): how many code blocks are not run, and why."""
    marked = [b for b in BLOCKS if b.language in CODE and b.reason]
    lines = [f"docs: {len(RUNNABLE)} code blocks run, {len(marked)} not run:"]
    lines += [f"  {b.id}: {b.reason}" for b in marked]
    return "\n".join(lines)


def test_every_block_is_code_that_runs_or_says_why_not():
    """Each fence names its language; a code block either runs below or carries its reason; prose blocks (text,
    yaml) carry none, since nothing would run them anyway."""
    unlabelled = [b.id for b in BLOCKS if not b.language]
    unknown = [b.id for b in BLOCKS if b.language and b.language not in CODE and b.language not in NOT_CODE]
    needless = [b.id for b in BLOCKS if b.language in NOT_CODE and b.reason]
    assert not unlabelled and not unknown and not needless, (unlabelled, unknown, needless)
    marked = [b for b in BLOCKS if b.language in CODE and b.reason]
    assert len(RUNNABLE) > len(marked), not_run_summary()  # most of the docs run; the rest are listed with reasons


# ---------------------------------------------------------------------------------------------
# The reader's folder


def _mmpretrain_layout(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)


def _torchvision_layout(source: Path, dest: Path) -> None:
    """torchvision's Google file: a plain state dict of the Inception3 names (ours, unprefixed), which expects
    transform_input (the zoo folds it)."""
    state = torch.load(source, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("backbone."): v for k, v in state.items()}, dest)


def _seed_cache(home: Path, name: str, build) -> None:
    """The zoo entry's first file, as a verified download leaves it: the file and its marker."""
    from inceptionv3.weights import ZOO, is_verified

    weight_file = ZOO[name].files[0]
    dest = home / weight_file.filename
    build(dest)
    stat = dest.stat()
    dest.with_name(dest.name + ".verified").write_text(f"{weight_file.hash} {stat.st_size} {stat.st_mtime_ns}")
    assert is_verified(dest, weight_file.hash)


@pytest.fixture(scope="session")
def reader(tmp_path_factory, trained_like_checkpoint):
    """The scratch folder and the environment that commands see (INCEPTIONV3_HOME with the seeded cache)."""
    from inceptionv3 import save_canonical
    from inceptionv3.weights import DEFAULT_MODEL, FID_MODEL, get_model

    root = tmp_path_factory.mktemp("reader")
    home = root / ".inceptionv3"
    home.mkdir()
    photos = photo_paths()
    jpegs = [p for p in photos if p.suffix == ".jpg"]
    for name, source in (("photo.jpg", jpegs[0]), ("my_photo.jpg", jpegs[1]), ("a.jpg", jpegs[2])):
        shutil.copyfile(source, root / name)
    Image.open(SHARED_DATA / "images" / "skimage_chelsea.png").save(root / "b.png")
    Image.open(SHARED_DATA / "images" / "skimage_coffee.png").save(root / "some_character.png")
    (root / "demo").mkdir()
    shutil.copyfile(REPO / "demo" / "bird.jpg", root / "demo" / "bird.jpg")
    # 7 images a side: enough for every neighbourhood the docs use (k = 5), and under the 16 from which `auto`
    # exports the network to OpenVINO, so the FID pages run eager instead of exporting once per set of taps
    for folder, picks in (("photos", jpegs[3:6]), ("generated", photos[:7]), ("real", photos[-7:])):
        (root / folder).mkdir()
        for p in picks:
            shutil.copyfile(p, root / folder / p.name)
    for name, picks in (("VIRTUAL_imagenet256_labeled.npz", photos[-8:]), ("samples.npz", photos[:6])):
        # ADM batches: arr_0 N x 256 x 256 x 3 uint8 (and arr_1 labels); under 16 images a side, so eager runs
        images = [np.array(Image.open(p).convert("RGB").resize((256, 256), Image.BICUBIC)) for p in picks]
        np.savez(root / name, np.stack(images), np.arange(len(images)))
    for wnid, picks in (("n02123045", jpegs[:3]), ("n02129604", jpegs[3:6])):  # tabby, tiger: folders by wnid
        (root / "my_classes" / wnid).mkdir(parents=True)
        for p in picks:
            shutil.copyfile(p, root / "my_classes" / wnid / p.name)

    data = root / "data"  # the docs' /data/
    data.mkdir()
    for name in ("my_checkpoint.pth", "mmpretrain.pth", "ckpt.pth", "inception-v3_3rdparty.pth"):
        _mmpretrain_layout(trained_like_checkpoint, data / name)
    _torchvision_layout(trained_like_checkpoint, data / "inception_v3_google-0cc3c7bd.pth")
    _keras_layout(data / "inception_v3.h5")
    model = get_model(trained_like_checkpoint)
    save_canonical(model, root / "my_checkpoint.safetensors", source="mmpretrain",
                   class_names=list(model.weights_info.class_names), preprocess=model.weights_info.preprocess)
    (root / "runs" / "a").mkdir(parents=True)
    shutil.copyfile(root / "my_checkpoint.safetensors", root / "runs" / "a" / "best.safetensors")

    _seed_cache(home, DEFAULT_MODEL, lambda dest: _mmpretrain_layout(trained_like_checkpoint, dest))
    _seed_cache(home, "inception_v3.tv_in1k", lambda dest: _torchvision_layout(trained_like_checkpoint, dest))
    _seed_cache(home, FID_MODEL, lambda dest: _fid_layout(dest))
    env = {"INCEPTIONV3_HOME": str(home), "INCEPTIONV3_OFFLINE": "1", "TORCH_HOME": str(root / ".torch")}
    yield root, env
    while _OTHER_TERMINAL:  # the reader's other terminal: SIGTERM drains it, and it exits 0
        server = _OTHER_TERMINAL.pop()
        assert server.stop() == 0, server.log.read_text()


def _keras_layout(dest: Path) -> None:
    """Keras's own InceptionV3 (random weights), saved by Keras as a whole-model .h5."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.applications.InceptionV3(weights=None).save(dest)


def _fid_layout(dest: Path) -> None:
    """pytorch-fid's file: a plain state dict of the 1008-class graph (seeded; BN as initialised)."""
    from inceptionv3 import InceptionV3

    torch.manual_seed(0)
    model = InceptionV3(num_classes=1008, count_include_pad=False, mixed_7c_pool="max", init_weights=False)
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, dest)


@contextlib.contextmanager
def _inside(root: Path, env: dict[str, str]):
    """cwd and environment of the reader's shell, for commands run in this process."""
    saved_cwd, saved_env = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.chdir(root)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------
# Running a block


def _commands(code: str) -> list[str]:
    """Shell lines with their continuations joined; comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in (ln.strip() for ln in joined.splitlines()) if line and not line.startswith("#")]


def _reader_paths(argv: list[str]) -> list[str]:
    """The docs' placeholders as this folder has them: /data/... is data/...; a server listens on 127.0.0.1 only."""
    return [re.sub(r"^/data/", "data/", arg).replace("0.0.0.0", "127.0.0.1") for arg in argv]


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from inceptionv3.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, stdout.getvalue() + stderr.getvalue()


class _Server:
    """``inceptionv3 serve`` as the reader starts it in another terminal: its own process, stopped by SIGTERM."""

    def __init__(self, argv: list[str], root: Path, env: dict[str, str], wait: bool = True):
        self.port = free_port()  # for the docs' 8000 or 8080
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(self.port)
        else:
            argv += ["--port", str(self.port)]
        self.grpc_port = None  # for the docs' 8001 or 8081
        if "--grpc-port" in argv:
            self.grpc_port = free_port()
            argv[argv.index("--grpc-port") + 1] = str(self.grpc_port)
        self.log = root / f"serve-{self.port}.log"
        self.argv = argv
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "inceptionv3", *argv], cwd=root,
                                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> _Server:
        try:
            wait_ready(f"http://127.0.0.1:{self.port}", deadline_s=120)
        except AssertionError:
            self.stop()
            raise AssertionError(f"`inceptionv3 {shlex.join(self.argv)}` did not become ready:\n"
                                 f"{self.log.read_text()}") from None
        return self

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _pip(argv: list[str]) -> None:
    """``pip install -e '.[extra,...]'``: this environment has the extras installed; check that they exist."""
    import tomllib

    assert argv[:3] == ["pip", "install", "-e"] and argv[3].startswith(".["), f"{shlex.join(argv)}: not from the clone"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    missing = [e for e in argv[3][2:-1].split(",") if e not in extras]
    assert not missing, f"{shlex.join(argv)}: no such extra {missing}"


def _page_folder(root: Path, page: Path) -> Path:
    """Each page's commands run in a folder of their own (the reader's files linked in), so that what one page
    writes (real_stats.npz, explanations/) is not in the way of another's."""
    folder = root / "pages" / page.stem
    if not folder.exists():
        folder.mkdir(parents=True)
        for entry in root.iterdir():
            if entry.name not in ("pages", ".inceptionv3", ".torch"):
                (folder / entry.name).symlink_to(entry)
    return folder


def _is_default_server(args: list[str]) -> bool:
    """``inceptionv3 serve`` with nothing but where it listens: the same server as the reader's other terminal (a
    reader cannot run two on port 8000), so the docs tests start it once for every page."""
    rest, i = [], 0
    while i < len(args):
        if args[i] in ("--port", "--host", "--grpc-port"):
            i += 2
            continue
        rest.append(args[i])
        i += 1
    return not rest


def run_shell_block(code: str, root: Path, env: dict[str, str]) -> None:
    servers: list[_Server] = []  # this block's own, stopped at its end
    servers_shared: list[_Server] = []  # the other terminal's, stopped at the session's end
    try:
        for line in _commands(code):
            argv = shlex.split(line, comments=True)
            line_env = dict(env)
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # NAME=value before a command
                name, _, value = argv.pop(0).partition("=")
                line_env[name] = value
            if argv[:3] == ["python", "-m", "inceptionv3"]:
                argv = ["inceptionv3", *argv[3:]]
            if argv[0] == "pip":
                _pip(argv)
                continue
            if argv[:2] == ["inceptionv3", "serve"]:
                if _is_default_server(argv[2:]) and line_env == env:  # the one running in the other terminal
                    servers_shared.append(_other_terminal(root, env, wait=False))
                else:  # started now; ready is awaited before the next command
                    servers.append(_Server(_reader_paths(argv[1:]), root, line_env, wait=False))
                continue
            for server in servers + servers_shared:
                server.wait_ready()
            if argv[0] == "inceptionv3":
                with _inside(root, line_env):
                    code_, output = _run_cli(_reader_paths(argv[1:]))
                shown = SHOWN_FAILURE.search(line)  # the doc shows this command failing: it must fail that way
                if shown:
                    assert code_ == int(shown.group(1)) and shown.group(2) in output, (line, code_, output)
                else:
                    assert code_ == 0, f"`{line}` exited {code_}:\n{output}"
                continue
            if "curl" in argv:
                # this block's server, else the one the reader started in the other terminal
                server = servers[-1] if servers else _other_terminal(root, env)
                done = subprocess.run(["bash", "-c", line.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")],
                                      cwd=root, env={**os.environ, **env}, capture_output=True, text=True,
                                      timeout=120)
                assert done.returncode == 0 and '"error"' not in done.stdout, (line, done.stdout, done.stderr)
                assert '"predictions"' in done.stdout, (line, done.stdout)
                continue
            raise AssertionError(f"`{line}`: the docs tests do not know how to run this; mark the block with "
                                 "<!-- not run by the docs tests: REASON -->")
        for server in servers + servers_shared:  # a block that only starts servers: each must become ready
            server.wait_ready()
    finally:
        statuses = [server.stop() for server in servers]  # every one stopped before any is judged
        for server, status in zip(servers, statuses, strict=True):
            assert status == 0, server.log.read_text()


def run_python_block(code: str, root: Path, env: dict[str, str], page: Path) -> None:
    """The snippet as a script in the reader's folder. The few names a snippet leaves to the reader (a list of
    paths, a model, a batch) are given here, each the plainest value of its kind."""
    code = re.sub(r"([\"'])/data/", r"\1data/", code)
    if "127.0.0.1:8000" in code:  # a client snippet, against the server in the reader's other terminal
        server = _other_terminal(root, env)
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        code = code.replace("127.0.0.1:8001", f"127.0.0.1:{server.grpc_port}")
    _exec(code, root, env, page)


_OTHER_TERMINAL: list[_Server] = []


def _other_terminal(root: Path, env: dict[str, str], wait: bool = True) -> _Server:
    """``inceptionv3 serve --grpc-port 8001`` as the reader leaves it running in another terminal while reading:
    started for the first block that calls it, shared by the later ones, stopped (and its exit checked) at the end
    of the session by the ``reader`` fixture."""
    if not _OTHER_TERMINAL:
        _OTHER_TERMINAL.append(_Server(["serve", "--grpc-port", "8001"], root, env, wait=False))
    return _OTHER_TERMINAL[0].wait_ready() if wait else _OTHER_TERMINAL[0]


_PAGES: dict[Path, dict] = {}


def _exec(code: str, root: Path, env: dict[str, str], page: Path) -> None:
    """The Python blocks of one page run in order in one namespace, as a reader pastes them into one session."""
    from inceptionv3 import get_model

    with _inside(root, env):
        if page not in _PAGES:
            _PAGES[page] = {
                "__name__": "__main__",
                "paths": ["photo.jpg", "a.jpg", "b.png"],
                "paths_or_any_iterable": iter(["photo.jpg", "a.jpg"]),
                "model": get_model("data/ckpt.pth"),
                "x": torch.zeros(1, 3, 299, 299),
                "real_loader": [torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                "generator_samples_uint8": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8),
                "steps": 1,
            }
        names = _PAGES[page]
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(code, "<doc block>", "exec"), names)  # noqa: S102 - the docs' own code


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_doc_block_runs_as_written(block, reader):
    root, env = reader
    root = _page_folder(root, block.path)
    if block.language == "python":
        run_python_block(block.code, root, env, block.path)
    else:
        run_shell_block(block.code, root, env)
