#!/usr/bin/env bash
# Real RabbitMQ client libraries against Warren (or, with --against-rabbitmq, against RabbitMQ
# from Debian's packages, to prove each expectation is RabbitMQ's behaviour).
#
# usage: interop-tests/clients/run.sh [--against-rabbitmq] [--clients pika,aio-pika,amqplib,amqp091-go]
#
# Installs what it needs on a fresh Debian machine as root (apt-get only for what is missing;
# Python packages into interop-tests/clients/.venv; npm packages from node/package-lock.json;
# Go from Debian's golang packages, built offline in GOPATH mode; Bunny, php-amqplib and the
# RabbitMQ Java client (compiled with javac) from Debian's packages; lapin and amqprs built
# with cargo from the workspace's client-drivers crate, into $CARGO_TARGET_DIR if set),
# builds and starts the broker on 127.0.0.1, runs every client's driver in parallel (each
# names its queues and exchanges after itself), then the cross-client matrix, and prints one
# report, also written to report.md (report-rabbitmq.md with --against-rabbitmq). Exits
# non-zero if anything failed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL_CLIENTS=pika,aio-pika,amqplib,amqp091-go,bunny,php-amqplib,java-client,rascal,rabbitmq-c,lapin,amqprs,celery
CLIENTS=$ALL_CLIENTS
AGAINST=warren
RABBIT_PORT=5687
RABBIT_DIST_PORT=25687
RABBIT_NODE=warrenclients@localhost
DRIVER_TIMEOUT=240   # seconds for one driver's whole scenario list
# Where cargo puts Warren and the Rust drivers (a relative CARGO_TARGET_DIR is relative to
# $ROOT, where cargo runs).
case "${CARGO_TARGET_DIR:-}" in
    "") TARGET_DIR=$ROOT/target ;;
    /*) TARGET_DIR=$CARGO_TARGET_DIR ;;
    *) TARGET_DIR=$ROOT/$CARGO_TARGET_DIR ;;
esac

while [ $# -gt 0 ]; do
    case "$1" in
        --against-rabbitmq) AGAINST=rabbitmq; shift ;;
        --clients) CLIENTS=$2; shift 2 ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

START=$(date +%s)
WORK=$(mktemp -d /tmp/warren-clients.XXXXXX)
BROKER_PID=""
EPMD_BEFORE=0
(exec 3<>/dev/tcp/127.0.0.1/4369) 2>/dev/null && EPMD_BEFORE=1

log() { echo "[clients] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 pid=$2 what=$3
    for _ in $(seq 1 300); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { log "$what exited during start-up"; return 1; }
        sleep 0.2
    done
    log "$what did not open port $port within 60 s"
    return 1
}

stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}

rabbit_env() {
    local d="$WORK/rabbit"
    env HOME="$d" \
        RABBITMQ_BASE="$d" \
        RABBITMQ_NODENAME="$RABBIT_NODE" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RABBIT_PORT" \
        RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/pid" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_SERVER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "$@"
}

cleanup() {
    set +e
    if [ "$AGAINST" = rabbitmq ] && [ -n "$BROKER_PID" ]; then
        rabbit_env /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1
        stop_pid "$(cat "$WORK/rabbit/pid" 2>/dev/null)"
        # epmd outlives the node; stop it only if nothing else was using it before us.
        [ "$EPMD_BEFORE" = 0 ] && epmd -kill >/dev/null 2>&1
    fi
    stop_pid "$BROKER_PID"
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- install ---------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    [ "$(id -u)" = 0 ] || { log "missing $*, and not root to apt-get install it"; exit 1; }
    if [ $APT_UPDATED = 0 ]; then apt-get update -qq >"$WORK/apt.log" 2>&1 || true; APT_UPDATED=1; fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; exit 1; }
}

needs() { [[ ",$CLIENTS," == *",$1,"* ]]; }

install_python() {
    command -v python3 >/dev/null || apt_install python3 python3-venv
    local stamp="$HERE/.stamp-python" want
    want=$(cat "$HERE/python/requirements.txt"; python3 --version)
    if [ -x "$HERE/.venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
    rm -rf "$HERE/.venv"
    if ! python3 -m venv "$HERE/.venv" >/dev/null 2>&1; then
        rm -rf "$HERE/.venv"
        apt_install python3-venv
        python3 -m venv "$HERE/.venv"
    fi
    log "pip install into .venv"
    "$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/python/requirements.txt"
    echo "$want" >"$stamp"
}

install_node() {
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    local stamp="$HERE/.stamp-node" want
    want=$(cat "$HERE/node/package-lock.json"; node --version)
    if [ -d "$HERE/node/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
    log "npm ci"
    (cd "$HERE/node" && npm ci --no-audit --no-fund --silent)
    echo "$want" >"$stamp"
}

# amqp091-go from Debian's package, whose sources are in /usr/share/gocode: built in GOPATH
# mode with no module proxy, so nothing is fetched.
GO_SRC=/usr/share/gocode/src/github.com/rabbitmq/amqp091-go
install_go() {
    { command -v go >/dev/null && [ -d "$GO_SRC" ]; } \
        || apt_install golang-go golang-github-rabbitmq-amqp091-go-dev
    log "go build amqp091_driver"
    mkdir -p "$HERE/.go"
    (cd "$HERE/go" && env GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= \
        GOCACHE="$HERE/.go/cache" go build -o "$HERE/.go/amqp091_driver" amqp091_driver.go)
}

# Bunny from Debian's ruby-bunny.
install_ruby() {
    { command -v ruby >/dev/null && ruby -e 'require "bunny"' 2>/dev/null; } || apt_install ruby ruby-bunny
}

# php-amqplib from Debian's php-amqplib (autoloader in /usr/share/php/PhpAmqpLib); pcntl,
# which php-cli has built in, drives its heartbeats on an idle connection.
install_php() {
    { command -v php >/dev/null && [ -f /usr/share/php/PhpAmqpLib/autoload.php ]; } \
        || apt_install php-cli php-amqplib
}

# RabbitMQ Java client 5.x from Debian's librabbitmq-client-java (slf4j from libslf4j-java),
# compiled with the JDK's javac.
JAVA_CP=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar
install_java() {
    { command -v javac >/dev/null && [ -f /usr/share/java/amqp-client.jar ] \
        && [ -f /usr/share/java/slf4j-nop.jar ]; } \
        || apt_install default-jdk-headless librabbitmq-client-java libslf4j-java
    log "javac JavaClientDriver"
    rm -rf "$HERE/.java" && mkdir -p "$HERE/.java"
    javac -nowarn -encoding UTF-8 -d "$HERE/.java" -cp "$JAVA_CP" "$HERE/java/JavaClientDriver.java" 2>&1 \
        | grep -v '^Note:' >&2 || true
    [ -f "$HERE/.java/JavaClientDriver.class" ] || { log "javac failed"; exit 1; }
}

# lapin and amqprs: the client-drivers crate (interop-tests/clients/rust), from crates.io
# through Cargo.lock like the rest of the workspace.
install_rust() {
    log "cargo build --release -p client-drivers"
    local t0=$SECONDS
    (cd "$ROOT" && cargo build --release -q -p client-drivers)
    log "client-drivers built in $(( SECONDS - t0 )) s"
}

install_rabbitmq() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
    # Keep the package's own service from starting: policy-rc.d says no to invoke-rc.d.
    local policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt_install rabbitmq-server || true
    [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { log "rabbitmq-server did not install"; exit 1; }
}

{ needs pika || needs aio-pika || needs celery; } && install_python
# report.py needs a Python even when no Python client runs.
[ -x "$HERE/.venv/bin/python" ] || install_python
{ needs amqplib || needs rascal; } && install_node
needs amqp091-go && install_go
needs rabbitmq-c && { command -v amqp-publish >/dev/null || apt_install amqp-tools; }
needs bunny && install_ruby
needs php-amqplib && install_php
needs java-client && install_java
{ needs lapin || needs amqprs; } && install_rust

# --- broker ----------------------------------------------------------------------------------

if [ "$AGAINST" = rabbitmq ]; then
    install_rabbitmq
    d="$WORK/rabbit"
    mkdir -p "$d/log" "$d/mnesia"
    echo '[].' >"$d/enabled_plugins"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users.guest = true\n' "$RABBIT_PORT" \
        >"$d/rabbitmq.conf"
    port_open "$RABBIT_PORT" && { log "port $RABBIT_PORT is taken"; exit 1; }
    VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')
    log "starting RabbitMQ $VERSION on 127.0.0.1:$RABBIT_PORT"
    rabbit_env setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/stdout" 2>&1 &
    BROKER_PID=$!
    wait_port "$RABBIT_PORT" "$BROKER_PID" rabbitmq || { tail -20 "$d/stdout" >&2; exit 1; }
    PORT=$RABBIT_PORT
    BROKER="RabbitMQ $VERSION (Debian package)"
    REPORT="$HERE/report-rabbitmq.md"
else
    log "cargo build --release -p warren-broker"
    (cd "$ROOT" && cargo build --release -q -p warren-broker)
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log "starting Warren on 127.0.0.1:$PORT"
    WARREN_LOG=warn "$TARGET_DIR/release/warren" --listen "127.0.0.1:$PORT" \
        --data-dir "$WORK/warren-data" >"$WORK/warren.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$PORT" "$BROKER_PID" warren || { tail -20 "$WORK/warren.log" >&2; exit 1; }
    BROKER="Warren $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    REPORT="$HERE/report.md"
fi
export AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
export SCENARIOS_JSON="$HERE/scenarios.json"

# --- drivers ---------------------------------------------------------------------------------

driver() {
    case "$1" in
        pika) echo "$HERE/.venv/bin/python $HERE/python/pika_driver.py" ;;
        aio-pika) echo "$HERE/.venv/bin/python $HERE/python/aio_pika_driver.py" ;;
        amqplib) echo "node $HERE/node/amqplib_driver.js" ;;
        rascal) echo "node $HERE/node/rascal_driver.js" ;;
        amqp091-go) echo "$HERE/.go/amqp091_driver" ;;
        rabbitmq-c) echo "bash $HERE/c/rabbitmq_c_driver.sh" ;;
        bunny) echo "ruby $HERE/ruby/bunny_driver.rb" ;;
        php-amqplib) echo "php $HERE/php/amqplib_driver.php" ;;
        java-client) echo "java -cp $HERE/.java:$JAVA_CP JavaClientDriver" ;;
        lapin) echo "$TARGET_DIR/release/lapin-driver" ;;
        amqprs) echo "$TARGET_DIR/release/amqprs-driver" ;;
        celery) echo "$HERE/.venv/bin/python $HERE/python/celery_driver.py" ;;
        *) log "unknown client $1 (known: $ALL_CLIENTS)"; exit 2 ;;
    esac
}

# Runs "$2..." for every client in parallel, stdout to $WORK/<client>.$1.jsonl.
each_client() {
    local phase=$1; shift
    local pids=() c
    for c in ${MATRIX//,/ }; do
        # shellcheck disable=SC2046
        timeout -k 5 "$DRIVER_TIMEOUT" $(driver "$c") "$@" \
            >"$WORK/$c.$phase.jsonl" 2>"$WORK/$c.$phase.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
}

# Celery is no scenario driver: it runs its own checks (a real worker, 1,000 tasks, a retry)
# alongside the scenarios and stays out of the cross-client matrix.
MATRIX=$(echo ",$CLIENTS," | sed 's/,celery,/,/; s/^,//; s/,$//')
CELERY_PID=""
if needs celery; then
    CELERY_WORKER_LOG="$WORK/celery.worker.log" timeout -k 5 "$DRIVER_TIMEOUT" $(driver celery) \
        >"$WORK/celery.checks.jsonl" 2>"$WORK/celery.checks.err" &
    CELERY_PID=$!
fi
log "scenarios: $CLIENTS against $BROKER on 127.0.0.1:$PORT"
each_client scenarios --mode scenarios
[ -n "$CELERY_PID" ] && { wait "$CELERY_PID" || true; }
log "cross-client: publish"
each_client cross-publish --mode cross-publish --peers "$MATRIX"
log "cross-client: consume"
each_client cross-consume --mode cross-consume --peers "$MATRIX"

# Celery with the broker restarted in the middle: last, alone, since every other client would
# lose its connection. The driver asks for the restart through a file and waits for the answer.
restart_broker() {
    if [ "$AGAINST" = rabbitmq ]; then
        rabbit_env /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1
        stop_pid "$BROKER_PID"
        rabbit_env setsid /usr/lib/rabbitmq/bin/rabbitmq-server >>"$WORK/rabbit/stdout" 2>&1 &
    else
        stop_pid "$BROKER_PID"
        WARREN_LOG=warn "$TARGET_DIR/release/warren" --listen "127.0.0.1:$PORT" \
            --data-dir "$WORK/warren-data" >>"$WORK/warren.log" 2>&1 &
    fi
    BROKER_PID=$!
    wait_port "$PORT" "$BROKER_PID" broker
}
if needs celery; then
    log "celery: broker restarted in the middle"
    CELERY_RESTART_REQUEST="$WORK/celery.restart-request" CELERY_RESTART_DONE="$WORK/celery.restart-done" \
        CELERY_WORKER_LOG="$WORK/celery.restart-worker.log" timeout -k 5 "$DRIVER_TIMEOUT" \
        $(driver celery) --mode restart >"$WORK/celery.restart.jsonl" 2>"$WORK/celery.restart.err" &
    celery_pid=$!
    while kill -0 "$celery_pid" 2>/dev/null; do
        if [ -e "$WORK/celery.restart-request" ] && [ ! -e "$WORK/celery.restart-done" ]; then
            log "restarting the broker"
            if restart_broker; then touch "$WORK/celery.restart-done"; else log "restart failed"; fi
        fi
        sleep 0.1
    done
    wait "$celery_pid" || true
fi

# --- report ----------------------------------------------------------------------------------

status=0
"$HERE/.venv/bin/python" "$HERE/report.py" --results "$WORK"/*.jsonl --clients "$MATRIX" \
    $(needs celery && echo --extra celery) \
    --broker "$BROKER" --seconds "$(( $(date +%s) - START ))" >"$REPORT" || status=$?
cat "$REPORT"
# The README's "Works with" table, from the Warren report.
[ "$AGAINST" = warren ] && { "$HERE/.venv/bin/python" "$HERE/works_with.py" --report "$REPORT" \
    --out "$HERE/works-with.md" >/dev/null || log "works_with.py failed"; }
if [ $status != 0 ]; then
    log "failures; driver stderr is in $WORK (kept)"
    KEEP_WORK=1
fi
exit $status
