"""What ``inceptionv3 serve`` takes: one field per setting, which is also its command-line flag (``options``), so
that a default or a help text lives in one place. No web framework is imported here: the parser is built without
the ``serve`` extra."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..backends import BACKENDS, PRECISIONS
from ..decode import DECODE_MODES
from ..errors import InputError
from ..options import option
from ..weights import DEFAULT_MODEL, ZOO


@dataclass
class ServeConfig:
    """Everything the app needs; ``--host``, ``--port`` and the process's other flags are the command's."""

    model: list[str] | None = option(help=f"zoo name or checkpoint file (default {DEFAULT_MODEL} unless --weights); "
                                     "repeat to serve several, each under /v2/models/NAME: its zoo name, the "
                                     "file's stem, or NAME=MODEL")
    weights: str | None = option(help="checkpoint file; with one --model, loaded into that zoo entry")
    backend: str = option("auto", help="auto (default): the fastest installed; eager: exact arithmetic",
                          choices=BACKENDS)
    precision: str = option("fp32", help="fp32, bf16 or int8, as for predict", choices=PRECISIONS)
    device: str | None = option(help="cuda, mps or cpu (default: the best available)")
    max_batch: int = option(8, help="most images the model thread runs together")
    max_delay_ms: float = option(0.0, help="how long the model thread waits for images not yet arrived to fill a "
                                 "batch (0: take what is queued or being decoded; raise on GPUs)")
    queue_size: int = option(64, help="images waiting for the model, or to be decoded, beyond which requests get 503")
    decode_workers: int = option(2, help="decoding threads")
    decode: str = option("auto", help="exact, fast (large JPEGs at a reduced DCT scale) or auto (exact on eager "
                         "fp32, else fast)", choices=DECODE_MODES)
    max_body_mb: float = option(20.0, help="largest request body (413 above)")
    max_pixels: int = option(40_000_000, help="largest upload in pixels (400 above)")
    max_files: int = option(16, help="most images per request")
    timeout_s: float = option(30.0, help="408 when a body takes longer to arrive, 504 when a result does")
    api_key: str | None = option(help="require 'Authorization: Bearer KEY' (several keys: comma-separated, one per "
                                 "client); prefer setting INCEPTIONV3_API_KEY, "
                                 "since command lines show in ps")
    name: str = option("inceptionv3", help="the model's name in the v2 protocol, when it serves one")
    explain_max_passes: int = option(64, help="most network passes one explanation may cost (422 above): 1 for "
                                     "gradcam and its kin, 2049 for scorecam and ablationcam at Mixed_7c")
    max_concurrency: int | None = option(help="with --api-key: most requests in flight per key (429 above), so "
                                         "that one client cannot take the whole queue")
    access_log: bool = option(False, help="one JSON line per request on stderr: time, request id, method, route, "
                              "status, milliseconds, client (never a body or a key)")
    grpc_port: int | None = option(help="also speak the v2 protocol over gRPC on this port (the grpc extra), to the "
                                   "same model threads")
    ready_before_start: bool = False
    """Finish the warm-up before the app starts (behind a proxy that routes to a replica once it has started)."""

    def __post_init__(self) -> None:
        if isinstance(self.model, str):  # ServeConfig(model="name"): one model
            self.model = [self.model]


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name in the v2 protocol and what ``Classifier`` loads."""

    name: str
    model: str | None
    weights: str | None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def model_specs(config: ServeConfig) -> list[ModelSpec]:
    """The models ``--model`` names, each with its v2 name: one model is ``--name``; several are each ``NAME=`` where
    given, else the zoo name or the file's stem. Names are checked here, before any weights load."""
    given = config.model or [None]
    if len(given) > 1 and config.weights:
        raise InputError("--weights goes with one --model; to serve several files, give each as --model NAME=FILE")
    specs = []
    for item in given:
        head, equals, rest = (item or "").partition("=")
        name, model = (head, rest) if equals and _NAME.fullmatch(head) and not os.path.exists(item) else (None, item)
        if name is None:
            name = config.name if len(given) == 1 else model if model in ZOO else Path(model).stem
        if not _NAME.fullmatch(name):
            raise InputError(f"model name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-' (it is a URL "
                             "path segment)")
        specs.append(ModelSpec(name, model or None, config.weights))
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise InputError(f"two models share a name in {names}: give each --model NAME=MODEL")
    return specs


def config_dict(config: ServeConfig) -> dict[str, Any]:
    """The configuration without the API key, for logs."""
    out = asdict(config)
    out["api_key"] = "(set)" if config.api_key else None
    return out


def env_api_key() -> str | None:
    return os.environ.get("INCEPTIONV3_API_KEY") or None


__all__ = ["ModelSpec", "ServeConfig", "config_dict", "env_api_key", "model_specs"]
