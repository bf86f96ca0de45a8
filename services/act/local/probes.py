"""Readiness probes and port choice for the local services.

A probe answers True or False quickly (one short attempt, no retries): the caller polls it
while watching the process, so a service that dies is reported at once instead of timing out.
"""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable


def free_port(host: str, taken: Iterable[int] = ()) -> int:
    """A port that nothing listens on now and that is not in `taken`.

    The port is only free when asked: a service started right after binds it, and if something
    else took it meanwhile the service fails to start and says so in its log.
    """
    avoid = set(taken)
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeError(f"no free port found on {host}")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port); ValueError naming the address."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def tcp_open(address: str, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at `host:port`."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


def grpc_serving(target: str, service: str = "", timeout: float = 1.0) -> bool:
    """True when the gRPC health service at `target` says SERVING for `service`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING
