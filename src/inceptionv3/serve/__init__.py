"""``inceptionv3 serve``: the HTTP server (FastAPI on uvicorn, one model thread). Needs the ``serve`` extra."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import InputError

logger = logging.getLogger("inceptionv3")


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(f"inceptionv3 serve needs the serve extra: pip install -e '.[serve]' in the clone "
                         f"({exc})") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    _require()
    import uvicorn

    from .app import ServeConfig, config_dict, create_app, env_api_key

    config = ServeConfig(
        model=args.model, weights=args.weights, backend=args.backend, precision=args.precision, device=args.device,
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, queue_size=args.queue_size,
        decode_workers=args.decode_workers, decode=args.decode, max_body_mb=args.max_body_mb,
        max_pixels=args.max_pixels, max_files=args.max_files, timeout_s=args.timeout_s,
        api_key=args.api_key or env_api_key(), name=args.name)
    if args.ray:
        from .ray import run

        print(f"serving on Ray Serve with {args.replicas} replica(s) at http://{args.host}:{args.port}/ with "
              f"{config_dict(config)}", file=sys.stderr)
        run(config, args.replicas, args.host, args.port, args.ray_address, args.cpus_per_replica)
        return 0
    app = create_app(config)
    server = app.state.server
    print(f"serving {server.model_label} ({server.classifier.preprocess.name}, {server.classifier.backend} "
          f"{server.classifier.precision} on {server.classifier.device}) at http://{args.host}:{args.port}/ "
          f"with {config_dict(config)}", file=sys.stderr)
    _run_draining(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                 timeout_graceful_shutdown=args.grace_s, access_log=args.log_level == "debug",
                                 limit_concurrency=args.max_connections, timeout_keep_alive=5))
    return 0


def _run_draining(config) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process ended with -15 even when every
    accepted request was answered. A drained SIGTERM is the ordinary way a server stops: here it exits 0."""
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and captured and captured[-1] == sig:
                captured.pop()

    DrainingServer(config).run()


def add_command(commands: argparse._SubParsersAction) -> None:
    from ..backends import BACKENDS, PRECISIONS
    from ..decode import DECODE_MODES
    from ..weights import DEFAULT_MODEL

    p = commands.add_parser("serve", help="serve a model over HTTP: a JSON API, the Open Inference Protocol v2, "
                            "Prometheus metrics and a web page")
    p.add_argument("--model", help=f"zoo name (default {DEFAULT_MODEL} unless --weights)")
    p.add_argument("--weights", help="checkpoint file; with --model, loaded into that zoo entry")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--max-batch", type=int, default=8, help="most images the model thread runs together")
    p.add_argument("--max-delay-ms", type=float, default=0.0,
                   help="how long the model thread waits to fill a batch (0: take what is queued; raise on GPUs)")
    p.add_argument("--queue-size", type=int, default=64, help="images waiting beyond which requests get 503")
    p.add_argument("--decode-workers", type=int, default=2, help="decoding threads")
    p.add_argument("--decode", choices=DECODE_MODES, default="auto",
                   help="exact, fast (large JPEGs at a reduced DCT scale) or auto (exact on eager fp32, else fast)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest upload in pixels (400 above)")
    p.add_argument("--max-files", type=int, default=16, help="most images per request")
    p.add_argument("--timeout-s", type=float, default=30.0, help="504 when a result takes longer")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'; prefer setting INCEPTIONV3_API_KEY, since "
                   "command lines show in ps")
    p.add_argument("--name", default="inceptionv3", help="the model's name in the v2 protocol")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (the ray extra)")
    p.add_argument("--replicas", type=int, default=2, help="with --ray: copies of the model, each with its thread")
    p.add_argument("--ray-address", help="with --ray: join this cluster (default: a local Ray on 127.0.0.1)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="with --ray: CPUs Ray reserves per replica")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections beyond which new ones get 503 (stalled clients cannot pile up)")
    p.add_argument("--grace-s", type=float, default=60.0,
                   help="on SIGTERM: seconds to answer the requests already accepted before closing")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_cmd_serve)


__all__ = ["add_command"]
