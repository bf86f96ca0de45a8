#!/usr/bin/env bash
# A local PostgreSQL server for development and the integration tests, from Debian's packages:
# its own cluster (not the system one on 5432), listening on 127.0.0.1 only.
#
#   deploy/local/postgres.sh install   apt-get install postgresql, only when it is missing
#   deploy/local/postgres.sh start     create the cluster once, start it, wait, ensure role/db act
#   deploy/local/postgres.sh stop      pg_ctl stop -m fast
#   deploy/local/postgres.sh status    exit 0 when running, 3 when not
#   deploy/local/postgres.sh url       print the connection URL
#   deploy/local/postgres.sh reset     stop and delete the cluster (all data)
#
# Connection: postgresql://act:act@127.0.0.1:$ACT_PG_PORT/act (role act, password act, owner of
# database act). TCP connections need the password (scram-sha-256); only the Unix socket, in a
# directory that only the server's user can enter, trusts its peers (for these scripts' admin).
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system user
# (made by Debian's package), so its directory must be reachable by that user. The default is
# <state>/pg; when the state dir is not reachable by postgres (~root is mode 700), it is
# /var/tmp/act-local-pg/<hash of the state dir> instead. `status` shows where it is.
#
# Environment:
#   ACT_LOCAL_STATE        state dir (default ~/.cache/act-local)
#   ACT_PG_DIR             the cluster's directory (data/, run/, postgres.log); see above
#   ACT_PG_PORT            port (default 55432, away from a system PostgreSQL on 5432)
#   ACT_PG_BINDIR          PostgreSQL's bin dir (default: newest /usr/lib/postgresql/*/bin)
#   ACT_PG_START_TIMEOUT   seconds start and stop wait (default 60)
set -euo pipefail

STATE=${ACT_LOCAL_STATE:-$HOME/.cache/act-local}
PORT=${ACT_PG_PORT:-55432}
TIMEOUT=${ACT_PG_START_TIMEOUT:-60}
DB_USER=act
DB_PASSWORD=act
DB_NAME=act
URL="postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"

log() { echo "postgres.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

find_bindir() {
    if [ -n "${ACT_PG_BINDIR:-}" ]; then
        echo "$ACT_PG_BINDIR"
        return 0
    fi
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] || return 1
    echo "$dir"
}

# Run a command as the cluster's owner: postgres when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_dir() {
    if [ -n "${ACT_PG_DIR:-}" ]; then
        echo "$ACT_PG_DIR"
    elif [ "$(id -u)" -ne 0 ]; then
        echo "$STATE/pg"
    else
        mkdir -p "$STATE"
        if (cd / && runuser -u postgres -- test -x "$STATE") 2>/dev/null; then
            echo "$STATE/pg"
        else
            echo "/var/tmp/act-local-pg/$(echo -n "$STATE" | sha256sum | cut -c1-12)"
        fi
    fi
}

cmd_install() {
    if find_bindir >/dev/null; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is missing: apt-get install postgresql as root"
        sudo=(sudo)
    fi
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        "${sudo[@]}" apt-get update -q
    fi
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql; then
        "${sudo[@]}" apt-get update -q
        "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql
    fi
    find_bindir >/dev/null || die "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb"
}

setup() {
    BINDIR=$(find_bindir) || die "PostgreSQL is not installed: run '$0 install'"
    if [ "$(id -u)" -eq 0 ]; then
        getent passwd postgres >/dev/null || die "no postgres system user (Debian's package makes it)"
    fi
    PGBASE=$(pg_dir)
    PGDATA="$PGBASE/data"
    SOCKDIR="$PGBASE/run"
    PGLOG="$PGBASE/postgres.log"
}

is_running() { as_owner "$BINDIR/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

init_cluster() {
    mkdir -p "$PGBASE"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$PGBASE"
    fi
    chmod 700 "$PGBASE"
    as_owner mkdir -p "$SOCKDIR"
    as_owner chmod 700 "$SOCKDIR"
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        log "creating the cluster in $PGDATA"
        as_owner "$BINDIR/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >"$PGBASE/initdb.log" 2>&1 ||
            {
                cat "$PGBASE/initdb.log" >&2
                die "initdb failed"
            }
        echo "include_if_exists = 'act-local.conf'" | as_owner tee -a "$PGDATA/postgresql.conf" >/dev/null
    fi
    # Rewritten at every start, so that a changed ACT_PG_PORT takes effect.
    as_owner tee "$PGDATA/act-local.conf" >/dev/null <<EOF
# Written by deploy/local/postgres.sh start.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCKDIR'
unix_socket_permissions = 0700
EOF
}

ensure_role_and_db() {
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PORT" -U postgres \
        -d postgres >/dev/null <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
EOF
}

cmd_start() {
    setup
    if is_running; then
        log "already running ($PGDATA)"
    else
        if port_in_use; then
            die "127.0.0.1:$PORT is already in use by another process (set ACT_PG_PORT)"
        fi
        init_cluster
        if ! as_owner "$BINDIR/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t "$TIMEOUT" start >/dev/null; then
            tail -n 40 "$PGLOG" >&2 || true
            die "PostgreSQL did not start"
        fi
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
        if ((SECONDS >= deadline)); then
            tail -n 40 "$PGLOG" >&2 || true
            die "PostgreSQL does not accept connections on 127.0.0.1:$PORT"
        fi
        sleep 0.2
    done
    ensure_role_and_db
    log "ready: $URL (cluster $PGDATA, log $PGLOG)"
    echo "$URL"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

cmd_stop() {
    setup
    if ! is_running; then
        log "not running"
        return 0
    fi
    if ! as_owner "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t "$TIMEOUT" stop >/dev/null; then
        log "no clean stop in ${TIMEOUT}s: pg_ctl stop -m immediate"
        as_owner "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w -t "$TIMEOUT" stop >/dev/null
    fi
    log "stopped"
}

cmd_status() {
    setup
    if is_running; then
        echo "postgres: running, $URL, cluster $PGDATA"
    else
        echo "postgres: not running (cluster $PGDATA)"
        return 3
    fi
}

cmd_reset() {
    cmd_stop
    rm -rf "$PGBASE"
    log "deleted $PGBASE"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) echo "$URL" ;;
reset) cmd_reset ;;
*)
    echo "usage: $0 {install|start|stop|status|url|reset}" >&2
    exit 2
    ;;
esac
