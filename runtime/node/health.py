"""`sdqkd health --config node.yaml`: the gRPC health check (grpc.health.v1) of a running node's
gNMI server, over the node's own mutual TLS, from the same host or pod. Exit 0 when the gNMI
service is SERVING, 1 otherwise (with the reason on stderr), 2 for a bad config. Used as the
liveness and readiness probe in Kubernetes, where kubelet's built-in gRPC probe cannot do TLS."""

from __future__ import annotations

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .config import ConfigError, NodeConfig, load_config


def _target(cfg: NodeConfig) -> str:
    """Where to dial the node's gNMI port from its own host: loopback when it binds every
    interface (its certificate names localhost), else the address it binds."""
    host, _, port = cfg.gnmi_listen.rpartition(":")
    if port == "0":  # an ephemeral port: the node wrote the one it bound
        ready = json.loads((cfg.data_dir / "ready.json").read_text())
        host, _, port = str(ready["gnmi"]).rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = "localhost"
    return f"{host}:{port}"


def check(cfg: NodeConfig, timeout: float = 5.0) -> str | None:
    """None when SERVING, else what is wrong."""
    from sdqkd.agent.serve import GNMI_SERVICE

    try:
        target = _target(cfg)
    except (OSError, ValueError, KeyError) as e:
        return f"no gNMI address yet: {e}"
    if cfg.tls is None:
        channel = grpc.insecure_channel(target)
    else:
        ca, cert, key = cfg.tls.read()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert))
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=GNMI_SERVICE),
                                                         timeout=timeout)
    except grpc.RpcError as e:
        return f"{target}: {e.code().name}: {e.details()}"
    finally:
        channel.close()
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
    return None


def main(config: str, timeout: float = 5.0) -> int:
    try:
        cfg = load_config(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    problem = check(cfg, timeout)
    if problem:
        print(f"sdqkd node {cfg.name}: not healthy: {problem}", file=sys.stderr)
        return 1
    print(f"sdqkd node {cfg.name}: SERVING")
    return 0
