"""``inceptionv3 serve --ray --replicas N``: the same app as a Ray Serve deployment (the ``ray`` extra).

Each replica builds the app itself (Ray's ingress builder runs in the replica), so each has its own model, model
thread and queue; Ray's HTTP proxy spreads requests across them. ``--ray-address`` joins an existing cluster
(``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others); without it a local Ray is
started on 127.0.0.1. Usage statistics are off, so nothing leaves the cluster.
"""

from __future__ import annotations

import dataclasses
import os
import time

from ..errors import InputError
from .config import ServeConfig


def deployment(config: ServeConfig, replicas: int, cpus_per_replica: float = 1.0):
    """The bound Ray Serve application: ``replicas`` copies of the app, each built where it runs."""
    from ray import serve

    replica_config = dataclasses.replace(config, ready_before_start=True)  # Ray routes to started replicas

    def build():
        from .app import create_app

        return create_app(replica_config)

    @serve.deployment(name="inceptionv3", num_replicas=replicas,
                      ray_actor_options={"num_cpus": cpus_per_replica},
                      max_ongoing_requests=max(8, config.queue_size))
    @serve.ingress(build)
    class InceptionV3Deployment:
        pass

    return InceptionV3Deployment.bind()


def run(config: ServeConfig, replicas: int, host: str, port: int, address: str | None = None,
        cpus_per_replica: float = 1.0, block: bool = True) -> None:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError("--ray needs the ray extra: pip install -e '.[ray]' in the clone") from None
    if replicas < 1:
        raise InputError(f"--replicas must be at least 1, got {replicas}")
    if config.grpc_port is not None:
        raise InputError("--grpc-port is not served through --ray: Ray's proxy routes HTTP only; run one "
                         "inceptionv3 serve --grpc-port per machine instead")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas, cpus_per_replica), name="inceptionv3", route_prefix="/")
    if not block:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()


__all__ = ["deployment", "run"]
