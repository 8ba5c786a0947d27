"""``inceptionv3 serve``: the HTTP server (FastAPI on uvicorn, a model thread per model; gRPC beside it with
``--grpc-port``). Needs the ``serve`` extra (and ``grpc`` for gRPC)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import InputError
from ..options import add_flags, config_from
from .config import ServeConfig, config_dict, env_api_key

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

    from .app import create_app

    config = config_from(ServeConfig, args, api_key=args.api_key or env_api_key())
    if config.access_log:  # one JSON object per line, alone on its line (the CLI's format prefixes names)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("inceptionv3.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    if args.ray:
        from .ray import run

        print(f"serving on Ray Serve with {args.replicas} replica(s) at http://{args.host}:{args.port}/ with "
              f"{config_dict(config)}", file=sys.stderr)
        run(config, args.replicas, args.host, args.port, args.ray_address, args.cpus_per_replica)
        return 0
    app = create_app(config, grpc_host=args.host)
    for server in app.state.models.servers.values():
        c = server.classifier
        print(f"serving {server.model_label} as {server.name!r} ({c.preprocess.name}, {c.backend} {c.precision} on "
              f"{c.device})", file=sys.stderr)
    grpc = f" and grpc://{args.host}:{config.grpc_port}" if config.grpc_port is not None else ""
    print(f"at http://{args.host}:{args.port}/{grpc} with {config_dict(config)}", file=sys.stderr)
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
    p = commands.add_parser("serve", help="serve a model over HTTP: a JSON API, the Open Inference Protocol v2, "
                            "Prometheus metrics and a web page")
    add_flags(p, ServeConfig)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
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
