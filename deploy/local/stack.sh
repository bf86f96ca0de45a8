#!/usr/bin/env bash
# Both local services at once, as .ci/run uses them:
#
#   deploy/local/stack.sh up       install PostgreSQL if missing, fetch Kafka if missing, start both
#   deploy/local/stack.sh down     stop both (each is tried even when the other fails)
#   deploy/local/stack.sh status   exit 0 when both run
#
# Then `source deploy/local/env.sh` for ACT_KAFKA_BOOTSTRAP and ACT_DATABASE_URL.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "${1:-}" in
up)
    "$HERE/postgres.sh" install
    "$HERE/kafka.sh" fetch
    "$HERE/postgres.sh" start >/dev/null
    "$HERE/kafka.sh" start
    ;;
down)
    rc=0
    "$HERE/kafka.sh" stop || rc=1
    "$HERE/postgres.sh" stop || rc=1
    exit $rc
    ;;
status)
    rc=0
    "$HERE/kafka.sh" status || rc=3
    "$HERE/postgres.sh" status || rc=3
    exit $rc
    ;;
*)
    echo "usage: $0 {up|down|status}" >&2
    exit 2
    ;;
esac
