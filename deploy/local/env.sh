# shellcheck shell=bash
# The connection settings of the services that deploy/local/kafka.sh and postgres.sh start.
#
#   source deploy/local/env.sh          exports them into this shell
#   eval "$(deploy/local/env.sh)"       the same, from a subprocess (prints export lines)
#
# Exports ACT_KAFKA_BOOTSTRAP (host:port) and ACT_DATABASE_URL (a libpq URL, postgresql://…,
# which psycopg 3 takes as is; SQLAlchemy wants postgresql+psycopg://…). Honours the same
# ACT_KAFKA_PORT and ACT_PG_PORT as the scripts. Warns on stderr when a port does not answer.
# No `set -e` here: it would leak into the shell that sources this file.

_act_local_env() {
    ACT_KAFKA_BOOTSTRAP="127.0.0.1:${ACT_KAFKA_PORT:-9092}"
    ACT_DATABASE_URL="postgresql://act:act@127.0.0.1:${ACT_PG_PORT:-55432}/act"
    export ACT_KAFKA_BOOTSTRAP ACT_DATABASE_URL
    local port
    for port in "${ACT_KAFKA_PORT:-9092}" "${ACT_PG_PORT:-55432}"; do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "env.sh: nothing listens on 127.0.0.1:$port (deploy/local/stack.sh up)" >&2
        fi
    done
}

_act_local_env
unset -f _act_local_env
if ! (return 0 2>/dev/null); then
    # Executed, not sourced: print the assignments for eval.
    printf 'export ACT_KAFKA_BOOTSTRAP=%q\n' "$ACT_KAFKA_BOOTSTRAP"
    printf 'export ACT_DATABASE_URL=%q\n' "$ACT_DATABASE_URL"
fi
