#!/usr/bin/env bash
# A local single-node Apache Kafka broker (KRaft, broker and controller in one JVM) for
# development and the integration tests, from the official org.apache.kafka:kafka_2.13 jars on
# Maven Central. No Docker, no tarball: Maven fetches the jars listed in kafka/pom.xml.
#
#   deploy/local/kafka.sh fetch    copy the broker's jars into the state dir (once; needs mvn)
#   deploy/local/kafka.sh start    fetch if needed, format storage once, start, wait until ready
#   deploy/local/kafka.sh stop     SIGTERM, wait for the clean shutdown, SIGKILL after a bound
#   deploy/local/kafka.sh status   exit 0 when running, 3 when not
#   deploy/local/kafka.sh reset    stop and delete the broker's data (topics, offsets)
#
# Environment:
#   ACT_LOCAL_STATE              state dir (default ~/.cache/act-local); all of this script's
#                                files are under <state>/kafka: lib/ config/ data/ logs/ kafka.pid
#   ACT_KAFKA_STATE_DIR          this broker's own dir (default <state>/kafka): config/ data/
#                                logs/ tools/ kafka.pid. The jars stay in <state>/kafka/lib, so a
#                                second broker (other ports, another dir) needs no second fetch
#   ACT_KAFKA_PORT               client listener port (default 9092), bound to 127.0.0.1 only
#   ACT_KAFKA_CONTROLLER_PORT    KRaft controller port (default 9093), 127.0.0.1 only; both ports
#                                may change between starts (the single voter updates its address)
#   ACT_KAFKA_HEAP_OPTS          JVM heap options (default "-Xms256m -Xmx512m")
#   ACT_KAFKA_JIT_OPTS           JVM compiler options (default "-XX:TieredStopAtLevel=1": the
#                                quick C1 compiler only. On two cores a fresh broker's C2
#                                compiler threads took half its CPU for minutes, 13-16 of
#                                28-32 s over bench/stream_bench.py; C1 only took none of that and
#                                handled the requests in the same CPU time. "" for the JVM's
#                                default, for a long-running broker on a larger machine)
#   ACT_KAFKA_START_TIMEOUT      seconds start waits for the broker (default 60)
#   ACT_KAFKA_STOP_TIMEOUT       seconds stop waits after SIGTERM before SIGKILL (default 30)
#   ACT_JAVA                     java executable (default $JAVA_HOME/bin/java, else java); 17+
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF_SRC="$HERE/kafka"
STATE=${ACT_LOCAL_STATE:-$HOME/.cache/act-local}
JARS_HOME="$STATE/kafka"
LIB="$JARS_HOME/lib"
KDIR=${ACT_KAFKA_STATE_DIR:-$STATE/kafka}
CONFIG="$KDIR/config/server.properties"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
PORT=${ACT_KAFKA_PORT:-9092}
CONTROLLER_PORT=${ACT_KAFKA_CONTROLLER_PORT:-9093}
HEAP_OPTS=${ACT_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
JIT_OPTS=${ACT_KAFKA_JIT_OPTS--XX:TieredStopAtLevel=1}
START_TIMEOUT=${ACT_KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=${ACT_KAFKA_STOP_TIMEOUT:-30}
if [ -n "${ACT_JAVA:-}" ]; then
    JAVA=$ACT_JAVA
elif [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    JAVA=$JAVA_HOME/bin/java
else
    JAVA=java
fi

log() { echo "kafka.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# The pom's hash marks which jars lib/ holds: a changed pom (another Kafka version) refetches.
pom_stamp() { sha256sum "$CONF_SRC/pom.xml" | cut -d' ' -f1; }

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "no java ($JAVA); Kafka 4 needs Java 17 or newer"
    local version
    version=$("$JAVA" -XshowSettings:properties -version 2>&1 |
        awk -F'= ' '/java.specification.version/ {print $2}')
    [ "${version%%.*}" -ge 17 ] 2>/dev/null ||
        die "$JAVA is Java ${version:-?}; Kafka 4 needs Java 17 or newer (set ACT_JAVA)"
}

cmd_fetch() {
    if [ -f "$LIB/.pom-sha256" ] && [ "$(cat "$LIB/.pom-sha256")" = "$(pom_stamp)" ]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (apt-get install maven)"
    log "fetching the Kafka broker's jars from Maven Central into $LIB"
    mkdir -p "$JARS_HOME"
    rm -rf "$LIB.new"
    if ! mvn -q -B -f "$CONF_SRC/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIB.new" >"$JARS_HOME/fetch.log" 2>&1; then
        cat "$JARS_HOME/fetch.log" >&2
        die "mvn failed (Maven Central reachable? proxy settings in ~/.m2/settings.xml)"
    fi
    ls "$LIB.new"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn did not bring kafka_2.13"
    pom_stamp >"$LIB.new/.pom-sha256"
    rm -rf "$LIB"
    mv "$LIB.new" "$LIB"
}

# The pid of our broker, when it runs: the pid file's process must still be kafka.Kafka with
# our config (a stale pid file whose pid was reused by something else does not count).
running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $CONFIG" || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
    mkdir -p "$KDIR/config" "$DATA" "$LOGS"
    cat >"$CONFIG" <<EOF
# Written by deploy/local/kafka.sh start: single-node KRaft, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
# One broker: every internal topic has one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Topics are created explicitly, with their partition counts.
auto.create.topics.enable=false
num.partitions=1
group.initial.rebalance.delay.ms=0
EOF
}

format_storage() {
    [ -f "$DATA/meta.properties" ] && return 0
    log "formatting storage in $DATA"
    local cluster_id
    cluster_id=$("$JAVA" -cp "$LIB/*" kafka.tools.StorageTool random-uuid)
    "$JAVA" -cp "$LIB/*" -Dkafka.logs.dir="$LOGS" \
        -Dlog4j2.configurationFile="$CONF_SRC/log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" --standalone >/dev/null
}

# kafka/WaitReady.java: compiled once into <state>/kafka/tools (saves ~2 s a start), or run as
# a single-file source program where there is no javac next to java.
wait_ready() {
    local src="$CONF_SRC/WaitReady.java" tools="$KDIR/tools" javac
    javac="$(dirname "$(readlink -f "$(command -v "$JAVA")")")/javac"
    if [ -x "$javac" ]; then
        if [ ! -f "$tools/WaitReady.class" ] || [ "$src" -nt "$tools/WaitReady.class" ] ||
            [ "$LIB/.pom-sha256" -nt "$tools/WaitReady.class" ]; then
            rm -rf "$tools"
            "$javac" -nowarn --release 17 -d "$tools" -cp "$LIB/*" "$src"
        fi
        "$JAVA" -XX:TieredStopAtLevel=1 -cp "$tools:$LIB/*" WaitReady "$@"
    else
        "$JAVA" -XX:TieredStopAtLevel=1 -cp "$LIB/*" "$src" "$@"
    fi
}

# Byte sizes of the logs before a start, so that a failure shows this start's lines only.
declare -A LOG_START=()
mark_logs() {
    local f
    for f in "$LOGS/kafka.out" "$LOGS/server.log"; do
        LOG_START[$f]=$(stat -c %s "$f" 2>/dev/null || echo 0)
    done
    rm -f "$LOGS/wait-ready.log"
}

show_logs() {
    local f from lines
    for f in "$LOGS/kafka.out" "$LOGS/server.log" "$LOGS/wait-ready.log"; do
        [ -s "$f" ] || continue
        from=${LOG_START[$f]:-0}
        # A log rolled since the start is shown from its beginning.
        [ "$(stat -c %s "$f")" -ge "$from" ] || from=0
        lines=$(tail -c "+$((from + 1))" "$f" | tail -n 40)
        [ -n "$lines" ] || continue
        echo "---- $f (this start's last lines)" >&2
        echo "$lines" >&2
    done
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        log "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    check_java
    cmd_fetch
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
            die "127.0.0.1:$p is already in use by another process"
        fi
    done
    write_config
    mark_logs
    format_storage
    rm -f "$PIDFILE"
    # setsid: the broker keeps running when the shell that started it ends or gets ^C.
    # shellcheck disable=SC2086,SC2016 # HEAP_OPTS and JIT_OPTS split; $$ and $0 expand in the child
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
        "$JAVA" $HEAP_OPTS $JIT_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$CONF_SRC/log4j2.properties" \
        -cp "$LIB/*" kafka.Kafka "$CONFIG" \
        </dev/null >>"$LOGS/kafka.out" 2>&1 &
    local deadline=$((SECONDS + START_TIMEOUT))
    while ! pid=$(running_pid); do
        if ((SECONDS >= deadline)) || ! kill -0 $! 2>/dev/null; then
            show_logs
            die "the broker did not start"
        fi
        sleep 0.1
    done
    log "started (pid $pid), waiting up to ${START_TIMEOUT}s for 127.0.0.1:$PORT"
    while ! port_open "$PORT"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            die "the broker exited during start-up"
        fi
        if ((SECONDS >= deadline)); then
            show_logs
            cmd_stop
            die "the broker did not open 127.0.0.1:$PORT in ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    local left=$((deadline - SECONDS))
    ((left >= 10)) || left=10
    if ! wait_ready "127.0.0.1:$PORT" "$left" >"$LOGS/wait-ready.log" 2>&1; then
        show_logs
        cmd_stop
        die "the broker did not answer metadata requests in ${START_TIMEOUT}s"
    fi
    log "ready: bootstrap 127.0.0.1:$PORT (logs in $LOGS)"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    log "stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "no clean exit in ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    log "stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        echo "kafka: running (pid $pid), bootstrap 127.0.0.1:$PORT, state $KDIR"
    else
        echo "kafka: not running (state $KDIR)"
        return 3
    fi
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA"
    log "deleted $DATA"
}

case "${1:-}" in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
reset) cmd_reset ;;
*)
    echo "usage: $0 {fetch|start|stop|status|reset}" >&2
    exit 2
    ;;
esac
