#!/bin/sh
# Container health check of the ACT images (their HEALTHCHECK runs it; so can anyone).
#
#   healthcheck.sh [TARGET]     TARGET defaults to $ACT_HEALTHCHECK
#
# TARGET is grpc://HOST:PORT (the grpc.health.v1 Check of the whole server, service "": the
# model services and the review queue's gRPC port) or an http(s) URL that must answer 2xx (the
# review server's /healthz, the /metrics port of the sampler and the decision consumer).
# Exit 0 when healthy, 1 when not, 2 when TARGET is not understood.
set -eu

target="${1:-${ACT_HEALTHCHECK:-}}"
case "$target" in
grpc://*)
    exec python3 -c '
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=4)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
' "${target#grpc://}"
    ;;
http://* | https://*)
    exec python3 -c '
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=4) as reply:
    sys.exit(0 if 200 <= reply.status < 300 else 1)
' "$target"
    ;;
*)
    echo "healthcheck.sh: give grpc://HOST:PORT or an http(s) URL (argument or ACT_HEALTHCHECK)," \
        "got '$target'" >&2
    exit 2
    ;;
esac
