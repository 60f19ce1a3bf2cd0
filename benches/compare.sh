#!/usr/bin/env bash
# Side-by-side comparison of Warren and RabbitMQ with warren-load, on this machine only.
#
# Installs RabbitMQ from Debian's packages if it is missing, starts a private RabbitMQ node and
# a Warren broker on spare loopback ports with their own data directories, runs every scenario
# against both in alternation, prints a Markdown table, and stops both brokers on exit.
#
# Usage: benches/compare.sh [--duration SECONDS] [--rounds N] [--scenarios a,b,...]
#          [--backlog MESSAGES] [--connections N] [--startup-reps N] [--rabbit-only]
# Scenarios (all in the default set, in this order): throughput throughput-noack
#   throughput-persistent throughput-persistent-quorum persistent-4x4 latency latency-persistent
#   fanout topic-10k backlog connections-10k startup idle-rss; also throughput-4x4 throughput-1k.
# Environment: RABBIT_PORT (5682), WARREN_PORT (5692), RABBIT_DIST_PORT (25682), KEEP_WORK=1,
#   QUIET_WAIT (10): seconds to wait before each run for the machine to be under 25% busy,
#   WARREN_BIN: a prebuilt warren binary to use instead of building target/release/warren,
#   CARGO_TARGET_DIR: where cargo builds (and where the binaries are copied from).

# The whole script is one brace group: bash parses it before running any of it, so editing
# or checking out this file during a run cannot change what the run does.
{
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=10
WARMUP=1
ROUNDS=3
SCENARIOS="throughput,throughput-noack,throughput-persistent,throughput-persistent-quorum,persistent-4x4,latency,latency-persistent,fanout,topic-10k,backlog,connections-10k,startup,idle-rss"
BACKLOG=1000000
CONNECTIONS=10000
# Fresh starts per broker and round in `startup`; seconds an empty broker idles in `idle-rss`.
STARTUP_REPS=3
IDLE_WAIT=5
RABBIT_ONLY=0
RABBIT_PORT=${RABBIT_PORT:-5682}
RABBIT_DIST_PORT=${RABBIT_DIST_PORT:-25682}
WARREN_PORT=${WARREN_PORT:-5692}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --backlog) BACKLOG=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --startup-reps) STARTUP_REPS=$2; shift 2 ;;
        --rabbit-only) RABBIT_ONLY=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# Arguments of warren-load for scenario $1 against broker $2 (warren or rabbitmq).
scenario_args() {
    case "$1" in
        throughput) echo "--scenario throughput" ;;
        throughput-persistent) echo "--scenario throughput --persistent --confirm 1000" ;;
        # RabbitMQ's replicated queue type (one node here: its Raft log is fsynced before a
        # confirm); Warren runs its ordinary durable queue.
        throughput-persistent-quorum)
            if [ "${2:-}" = rabbitmq ]; then
                echo "--scenario throughput --persistent --confirm 1000 --queue-type quorum"
            else
                echo "--scenario throughput --persistent --confirm 1000"
            fi ;;
        # LavinMQ's headline setup: transient 16-byte messages, consumer in no-ack mode.
        throughput-noack) echo "--scenario throughput --no-ack --size 16" ;;
        # Four independent publisher -> queue -> consumer chains, persistent and confirmed;
        # RabbitMQ on quorum queues as in throughput-persistent-quorum.
        persistent-4x4)
            local q4="--scenario throughput --publishers 4 --consumers 4 --queues 4 --persistent --confirm 1000"
            if [ "${2:-}" = rabbitmq ]; then echo "$q4 --queue-type quorum"; else echo "$q4"; fi ;;
        throughput-4x4) echo "--scenario throughput --publishers 4 --consumers 4 --queues 4" ;;
        throughput-1k) echo "--scenario throughput --size 1024" ;;
        # One publisher to a fanout exchange with 8 queues bound, one consumer each.
        fanout) echo "--scenario throughput --exchange-type fanout --queues 8 --consumers 8" ;;
        # A topic exchange with 10,000 bindings over 4 queues, random precomputed keys (topic.rs).
        topic-10k) echo "--scenario throughput --exchange-type topic --bindings 10000 --queues 4 --consumers 4" ;;
        latency) echo "--scenario latency --rate 5000" ;;
        latency-persistent) echo "--scenario latency --rate 5000 --persistent --confirm 1000" ;;
        connections-10k) echo "--scenario connections --connections $CONNECTIONS --idle $IDLE_WAIT" ;;
        # Not warren-load scenarios of their own: fill, restart, drain (run_backlog); fresh
        # starts (run_startup, run_idle_rss).
        backlog|startup|idle-rss) echo "" ;;
        *) echo "unknown scenario: $1" >&2; return 1 ;;
    esac
}

# How long one warren-load run of scenario $1 may take before it is killed.
scenario_timeout() {
    case "$1" in
        # Handshakes at RabbitMQ's pace, two idle periods, closing.
        connections-10k) echo 900 ;;
        # Setting up 10,000 bindings takes RabbitMQ a while.
        topic-10k) echo $((${DURATION%.*} + ${WARMUP%.*} + 300)) ;;
        *) echo $((${DURATION%.*} + ${WARMUP%.*} + 60)) ;;
    esac
}
for s in ${SCENARIOS//,/ }; do scenario_args "$s" >/dev/null; done

# Where cargo puts the binaries: CARGO_TARGET_DIR if set (relative to here, as for cargo).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac

# 10,000 connections need 10,000 descriptors in the broker and in warren-load (both inherit
# this limit; RabbitMQ sizes its socket limit from it, and Erlang's port limit ERL_MAX_PORTS
# is 65536 in 3.10's rabbitmq-env). Raise the soft limit as far as the hard one allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

WORK=$(mktemp -d /tmp/warren-compare.XXXXXX)
LOG="$WORK/runs.log"
RESULTS="$WORK/results"
: >"$RESULTS"
RABBIT_PID=""
WARREN_PID=""
EPMD_BEFORE=0
(exec 3<>/dev/tcp/127.0.0.1/4369) 2>/dev/null && EPMD_BEFORE=1

log() { echo "[compare] $*" >&2; }

stop_pid() {
    local pid=$1 name=$2
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    set +e
    stop_pid "$WARREN_PID" warren
    if [ -n "$RABBIT_PID" ]; then
        # rabbitmqctl stop shuts the node down cleanly; fall back to signals.
        rabbit_env /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1
        stop_pid "$RABBIT_PID" rabbitmq
    fi
    # epmd outlives the node; stop it only if this script started it and no other node (of
    # another run) registered with it since.
    if [ "$EPMD_BEFORE" = 0 ] && [ -n "$RABBIT_PID" ] && ! epmd -names 2>/dev/null | grep -q '^name '; then
        log "stopping epmd"
        epmd -kill >/dev/null 2>&1
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

# --- RabbitMQ --------------------------------------------------------------------------------

install_rabbitmq() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
    [ "$(id -u)" = 0 ] || { log "RabbitMQ is missing and we are not root to install it"; exit 1; }
    log "installing rabbitmq-server from Debian's packages"
    # Keep the package's own service from starting: policy-rc.d says no to invoke-rc.d.
    local policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d
    # If a default instance came up anyway (systemd), stop it: it would hold 5672 and epmd.
    if ss -ltnp 'sport = :5672' 2>/dev/null | grep -q beam; then
        log "stopping the package's default RabbitMQ instance"
        service rabbitmq-server stop >/dev/null 2>&1 || systemctl stop rabbitmq-server >/dev/null 2>&1 || true
    fi
}

# One node name per port, so that runs on other ports can share epmd with this one.
RABBIT_NODE="warrenbench$RABBIT_PORT@localhost"

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

# Starts the node in the background (data in $WORK/rabbit, kept across restarts); sets
# RABBIT_LAUNCHER. The node writes its beam pid to $WORK/rabbit/pid once it runs.
launch_rabbitmq() {
    local d="$WORK/rabbit"
    rm -f "$d/pid"
    rabbit_env setsid /usr/lib/rabbitmq/bin/rabbitmq-server >>"$d/stdout" 2>&1 &
    RABBIT_LAUNCHER=$!
}

start_rabbitmq() {
    local d="$WORK/rabbit"
    mkdir -p "$d/log" "$d/mnesia"
    echo '[].' >"$d/enabled_plugins"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users.guest = true\n' "$RABBIT_PORT" >"$d/rabbitmq.conf"
    port_open "$RABBIT_PORT" && { log "port $RABBIT_PORT is taken"; exit 1; }
    log "starting RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null) on 127.0.0.1:$RABBIT_PORT"
    launch_rabbitmq
    wait_port "$RABBIT_PORT" "$RABBIT_LAUNCHER" rabbitmq || { tail -20 "$d/stdout" >&2; exit 1; }
    RABBIT_PID=$(cat "$d/pid")
    log "RabbitMQ is up (beam pid $RABBIT_PID, open files limit $(fd_limit "$RABBIT_PID"))"
}

# --- Warren ----------------------------------------------------------------------------------

# Starts Warren in the background on its data directory (kept across restarts).
launch_warren() {
    mkdir -p "$WORK/warren-data"
    WARREN_LOG=warn "$WORK/bin/warren" --listen "127.0.0.1:$WARREN_PORT" \
        --data-dir "$WORK/warren-data" >>"$WORK/warren.log" 2>&1 &
    WARREN_PID=$!
}

start_warren() {
    port_open "$WARREN_PORT" && { log "port $WARREN_PORT is taken"; return 1; }
    mkdir -p "$WORK/warren-data"
    log "starting Warren on 127.0.0.1:$WARREN_PORT"
    launch_warren
    wait_port "$WARREN_PORT" "$WARREN_PID" warren || { tail -20 "$WORK/warren.log" >&2; WARREN_PID=""; return 1; }
    log "Warren is up (pid $WARREN_PID, open files limit $(fd_limit "$WARREN_PID"))"
}

# The soft limit on open files of a process.
fd_limit() { awk '/^Max open files/ { print $4 }' "/proc/$1/limits" 2>/dev/null || echo '?'; }

# --- Runs ------------------------------------------------------------------------------------

# Copied into $WORK after the build (snapshot_binaries): other work in the same tree may
# rebuild target/release during a run, and a restarted broker must be the same build.
LOAD="$WORK/bin/warren-load"

# Percentage of all cores busy over one second, from /proc/stat.
machine_busy_pct() {
    local u n s i w q sq st t1 i1 t2 i2
    read -r _ u n s i w q sq st _ </proc/stat
    t1=$((u + n + s + i + w + q + sq + st)) i1=$((i + w))
    sleep 1
    read -r _ u n s i w q sq st _ </proc/stat
    t2=$((u + n + s + i + w + q + sq + st)) i2=$((i + w))
    [ $((t2 - t1)) -gt 0 ] || { echo 0; return; }
    echo $((100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1)))
}

# Other work on the machine (builds, tests) skews a run: give it QUIET_WAIT seconds to calm down.
wait_quiet() {
    local limit=${QUIET_WAIT:-10} waited=0 busy
    while [ "$waited" -lt "$limit" ]; do
        busy=$(machine_busy_pct)
        [ "$busy" -lt 25 ] && return 0
        waited=$((waited + 1))
    done
    log "machine still ${busy}% busy after ${limit} s; running anyway (see 'other processes')"
}

# run_one BROKER SCENARIO ROUND: one warren-load run; appends "broker scenario key value" lines.
run_one() {
    local broker=$1 scenario=$2 round=$3 port pid out
    if [ "$broker" = warren ]; then port=$WARREN_PORT pid=$WARREN_PID; else port=$RABBIT_PORT pid=$RABBIT_PID; fi
    if [ -z "$pid" ] || proc_gone "$pid"; then
        log "$broker is not running: skipping $scenario"
        return 0
    fi
    case "$scenario" in
        backlog) run_backlog "$broker" "$round"; return 0 ;;
        startup) run_startup "$broker" "$round"; return 0 ;;
        idle-rss) run_idle_rss "$broker" "$round"; return 0 ;;
    esac
    wait_quiet
    log "round $round: $scenario on $broker"
    # Persistent runs: count the broker's fsync-family syscalls over the measured window.
    local sync_job="" sync_out="$WORK/syncs.$broker"
    if [[ $scenario == *persistent* ]] && [ "$HAVE_PERF" = 1 ]; then
        rm -f "$sync_out"
        count_syncs "$pid" "$sync_out" &
        sync_job=$!
    fi
    # shellcheck disable=SC2046
    if out=$(timeout "$(scenario_timeout "$scenario")" "$LOAD" --addr "127.0.0.1:$port" \
        --duration "$DURATION" --warmup "$WARMUP" --broker-pid "$pid" --label "$broker" \
        $(scenario_args "$scenario" "$broker") 2>&1); then
        :
    else
        log "$scenario on $broker failed (see $LOG)"
    fi
    if [ -n "$sync_job" ]; then
        wait "$sync_job" || true
        out="$out$(sync_result "$sync_out" "$out")"
    fi
    record "$broker" "$scenario" "$round" "$out"
}

# record BROKER SCENARIO ROUND OUTPUT: logs the output and appends its RESULT values.
record() {
    local broker=$1 scenario=$2 round=$3 out=$4
    printf '### %s %s round %s\n%s\n\n' "$broker" "$scenario" "$round" "$out" >>"$LOG"
    echo "$out" | grep '^RESULT ' | tr ' ' '\n' | grep '=' | while IFS='=' read -r k v; do
        echo "$broker $scenario $k $v"
    done >>"$RESULTS" || true
}

# --- fsyncs ----------------------------------------------------------------------------------
# perf counts the syscalls:sys_enter_* tracepoints of every thread of the broker in the kernel:
# each fsync/fdatasync/sync_file_range/syncfs call the broker makes, at no cost to it (strace
# would stop the broker at every syscall). It runs for the measured window: it starts after
# the warm-up and lasts --duration, give or take the milliseconds perf needs to attach.

SYNC_EVENTS="syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_sync_file_range,syscalls:sys_enter_syncfs"
HAVE_PERF=0
if command -v perf >/dev/null 2>&1 && perf stat -x, -e "$SYNC_EVENTS" -- true >/dev/null 2>&1; then
    HAVE_PERF=1
fi

count_syncs() {
    local pid=$1 out=$2
    sleep "$WARMUP"
    # task-clock rides along: without a non-tracepoint event in the list, perf 6.1 sometimes
    # reports the tracepoints as "<not counted>" for a process attached with -p.
    perf stat -x, -o "$out" -e "task-clock,$SYNC_EVENTS" -p "$pid" -- sleep "$DURATION" >/dev/null 2>&1
}

# sync_result FILE RUN-OUTPUT: a line for the run's output with fsyncs/s and messages confirmed
# (or, without confirms, published) per fsync, as "RESULT" keys.
sync_result() {
    local file=$1 out=$2 syncs per_s msgs
    [ -s "$file" ] || { printf '\nfsyncs:    perf gave no counts'; return 0; }
    if grep 'syscalls:' "$file" | grep -qv '^[0-9]'; then
        printf '\nfsyncs:    perf did not count: %s' "$(grep 'syscalls:' "$file" | tr '\n' ' ')"
        return 0
    fi
    syncs=$(awk -F, '/syscalls:/ { n += $1 } END { print n + 0 }' "$file")
    per_s=$(awk -v n="$syncs" -v d="$DURATION" 'BEGIN { printf "%.1f", n / d }')
    msgs=$(echo "$out" | grep '^RESULT ' | tr ' ' '\n' | awk -F= '
        $1 == "confirmed_per_s" { c = $2 } $1 == "published_per_s" { p = $2 }
        END { print (c > 0 ? c : p) + 0 }')
    printf '\nfsyncs:    %s in %s s (%s/s; %s)\nRESULT fsyncs_per_s=%s msgs_per_fsync=%s' \
        "$syncs" "$DURATION" "$per_s" "$(tr '\n' ' ' <"$file" | sed 's/  */ /g')" "$per_s" \
        "$(awk -v m="$msgs" -v f="$per_s" 'BEGIN { if (f > 0) printf "%.1f", m / f; else print -1 }')"
}

# --- Stopping and starting a broker ----------------------------------------------------------

broker_pid() { if [ "$1" = warren ]; then echo "$WARREN_PID"; else echo "$RABBIT_PID"; fi; }
broker_port() { if [ "$1" = warren ]; then echo "$WARREN_PORT"; else echo "$RABBIT_PORT"; fi; }

# stop_broker BROKER: SIGTERM, and wait for the process to be gone (SIGKILL after 300 s); sets
# STOP_MS to the time that took.
stop_broker() {
    local broker=$1 pid t0 t1
    pid=$(broker_pid "$broker")
    STOP_MS=-1
    [ -n "$pid" ] || return 0
    t0=$(now_ns)
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 3000); do proc_gone "$pid" && break; sleep 0.1; done
    t1=$(now_ns)
    if ! proc_gone "$pid"; then
        log "$broker did not stop within 300 s of SIGTERM: killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    wait "$pid" 2>/dev/null || true
    # RabbitMQ's launcher script exits right after its beam process: reap it.
    if [ "$broker" = rabbitmq ] && [ -n "${RABBIT_LAUNCHER:-}" ]; then
        for _ in $(seq 1 50); do proc_gone "$RABBIT_LAUNCHER" && break; sleep 0.1; done
        proc_gone "$RABBIT_LAUNCHER" && { wait "$RABBIT_LAUNCHER" 2>/dev/null || true; }
    fi
    STOP_MS=$(ms_between "$t0" "$t1")
}

# wipe_data BROKER: an empty data directory for the next start, as on a new machine.
wipe_data() {
    if [ "$1" = warren ]; then
        rm -rf "$WORK/warren-data"
    else
        rm -rf "$WORK/rabbit/mnesia"
        mkdir -p "$WORK/rabbit/mnesia"
    fi
}

# relaunch BROKER [warren-load args]: starts the (stopped) broker on its data directory and
# times it with `warren-load --scenario ready` (a handshake attempt every ms from the launch
# on); sets WARREN_PID or RABBIT_PID and READY_OUT (ready's output). Fails if no handshake.
relaunch() {
    local broker=$1 t0 watch rc=0
    shift
    t0=$(now_ns)
    if [ "$broker" = warren ]; then launch_warren; watch=$WARREN_PID; else launch_rabbitmq; watch=$RABBIT_LAUNCHER; fi
    READY_OUT=$(timeout 900 "$LOAD" --addr "127.0.0.1:$(broker_port "$broker")" --label "$broker" \
        --scenario ready --retry-ms 1 --since-ns "$t0" --timeout 850 --broker-pid "$watch" "$@" 2>&1) || rc=1
    if [ "$broker" = rabbitmq ]; then
        # The beam process writes its pid once it runs; the launcher script is its parent.
        for _ in $(seq 1 100); do [ -s "$WORK/rabbit/pid" ] && break; sleep 0.1; done
        RABBIT_PID=$(cat "$WORK/rabbit/pid" 2>/dev/null || echo "")
    fi
    return $rc
}

# --- Start-up and idle memory ----------------------------------------------------------------

# run_startup BROKER ROUND: $STARTUP_REPS times: stop the broker, empty its data directory,
# launch it and time the first successful AMQP handshake. The last start stays up for the
# scenarios after this one.
run_startup() {
    local broker=$1 round=$2 rep
    for rep in $(seq 1 "$STARTUP_REPS"); do
        stop_broker "$broker"
        wipe_data "$broker"
        wait_quiet
        log "round $round: startup $rep/$STARTUP_REPS on $broker"
        relaunch "$broker" || log "$broker did not start (see $LOG)"
        record "$broker" startup "$round" "$READY_OUT"
    done
}

# run_idle_rss BROKER ROUND: a fresh start on an empty data directory, one handshake, then
# $IDLE_WAIT s of nothing, and the broker's resident memory (RabbitMQ: the beam.smp process).
run_idle_rss() {
    local broker=$1 round=$2 pid kib
    stop_broker "$broker"
    wipe_data "$broker"
    wait_quiet
    log "round $round: idle-rss on $broker"
    relaunch "$broker" || { log "$broker did not start (see $LOG)"; record "$broker" idle-rss "$round" "$READY_OUT"; return 0; }
    sleep "$IDLE_WAIT"
    pid=$(broker_pid "$broker")
    kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo "")
    record "$broker" idle-rss "$round" "$READY_OUT
idle ${IDLE_WAIT} s after the handshake: VmRSS ${kib:-?} kB
RESULT idle_rss_mib=$(awk -v k="${kib:--1024}" 'BEGIN { printf "%.1f", k / 1024 }')"
}

# --- Backlog ---------------------------------------------------------------------------------

BACKLOG_QUEUE=warren-backlog

# Resident memory of a process in MiB, -1 if it has none (gone, or a zombie).
rss_mib() {
    local kib
    kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
    if [ -n "$kib" ]; then echo $((kib / 1024)); else echo -1; fi
}

# True once a process has exited (a zombie child of this shell counts as exited).
proc_gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

now_ns() { date +%s%N; }
ms_between() { echo $((($2 - $1) / 1000000)); }

# run_backlog BROKER ROUND: fill a durable queue with $BACKLOG persistent 100-byte messages
# (confirms, no consumer), read the broker's RSS after it sat for 5 s, stop it with SIGTERM,
# start it again and time the first successful handshake, read RSS again, drain the queue.
run_backlog() {
    local broker=$1 round=$2 port pid out all stop_ms
    if [ "$broker" = warren ]; then port=$WARREN_PORT pid=$WARREN_PID; else port=$RABBIT_PORT pid=$RABBIT_PID; fi
    local common=(--addr "127.0.0.1:$port" --label "$broker" --queue-name "$BACKLOG_QUEUE")
    wait_quiet
    log "round $round: backlog of $BACKLOG on $broker: fill"
    out=$(timeout 1800 "$LOAD" "${common[@]}" --scenario fill --count "$BACKLOG" --size 100 \
        --persistent --confirm 1000 --broker-pid "$pid" --timeout 1700 2>&1) \
        || { log "backlog fill on $broker failed (see $LOG)"; record "$broker" backlog "$round" "$out"; return 0; }
    all=$out
    sleep 5
    all="$all
RESULT rss_sit_mib=$(rss_mib "$pid")"

    log "round $round: backlog on $broker: restart"
    stop_broker "$broker"
    stop_ms=$STOP_MS
    relaunch "$broker" --queue-name "$BACKLOG_QUEUE" \
        || log "$broker did not answer after the restart (see $LOG)"
    out=$READY_OUT
    pid=$(broker_pid "$broker")
    all="$all
stopped ${stop_ms} ms after SIGTERM
$out
RESULT stop_ms=$stop_ms rss_restart_mib=$(rss_mib "$pid")"

    log "round $round: backlog on $broker: drain"
    out=$(timeout 1800 "$LOAD" "${common[@]}" --scenario drain --broker-pid "$pid" --timeout 1700 2>&1) \
        || log "backlog drain on $broker failed (see $LOG)"
    record "$broker" backlog "$round" "$all
$out"
}

case ",$SCENARIOS," in *,connections-10k,*)
    if [ "$NOFILE" -lt $((CONNECTIONS + 100)) ]; then
        log "open files limit is $NOFILE: connections-10k needs $((CONNECTIONS + 100)) (raise the hard limit, ulimit -Hn)"
    fi ;;
esac
install_rabbitmq
log "building (release): warren-load$([ $RABBIT_ONLY = 0 ] && [ -z "${WARREN_BIN:-}" ] && echo ' and warren')"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p warren-benches
mkdir -p "$WORK/bin"
cp "$TARGET_DIR/release/warren-load" "$LOAD"
HAVE_WARREN=0
if [ $RABBIT_ONLY = 0 ] && [ -n "${WARREN_BIN:-}" ]; then
    cp "$WARREN_BIN" "$WORK/bin/warren"
    start_warren && HAVE_WARREN=1
elif [ $RABBIT_ONLY = 0 ]; then
    if cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p warren-broker 2>"$WORK/build-warren.log"; then
        cp "$TARGET_DIR/release/warren" "$WORK/bin/warren"
        start_warren && HAVE_WARREN=1
    else
        log "Warren does not build: running RabbitMQ only"
        tail -5 "$WORK/build-warren.log" >&2
    fi
fi
start_rabbitmq

START=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
    for s in ${SCENARIOS//,/ }; do
        # Alternate who goes first, so that neither always runs on a warmer (or busier) machine.
        if [ $((round % 2)) = 1 ]; then order="warren rabbitmq"; else order="rabbitmq warren"; fi
        for b in $order; do
            [ "$b" = warren ] && [ $HAVE_WARREN = 0 ] && continue
            run_one "$b" "$s" "$round"
        done
    done
done
ELAPSED=$(($(date +%s) - START))

# --- Report ----------------------------------------------------------------------------------

echo
echo "## Warren vs RabbitMQ ($(date -u +%Y-%m-%d), $(nproc) cores shared by brokers and generator)"
echo
echo "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null), Warren ${WARREN_BIN:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')};" \
    "$ROUNDS round(s) of ${DURATION} s per scenario and broker; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, Linux $(uname -r)."
echo
awk -v scenarios="$SCENARIOS" -v conns="$CONNECTIONS" '
    # Input: "broker scenario key value" per run (startup: per start). -1 means "not measured".
    {
        if ($4 == -1) next
        key = $1 SUBSEP $2 SUBSEP $3
        vals[key, ++n[key]] = $4 + 0
    }
    # The median of the values of one key ("" if none); sets LO and HI to their extremes.
    function median(b, s, k,   key, m, i, j, t, a) {
        key = b SUBSEP s SUBSEP k
        m = n[key] + 0
        if (m == 0) return ""
        for (i = 1; i <= m; i++) a[i] = vals[key, i]
        for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        LO = a[1]; HI = a[m]
        return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    # The median, and with several values how far they spread (half the range, in % of it).
    function fmt(b, s, k, digits,   m, out) {
        m = median(b, s, k)
        if (m == "") return "n/a"
        out = sprintf("%." digits "f", m)
        if (HI > LO && m != 0) out = out sprintf(" ±%.0f%%", 50 * (HI - LO) / (m < 0 ? -m : m))
        return out
    }
    function row(s, label, k, digits,   w, r, ratio) {
        w = median("warren", s, k); r = median("rabbitmq", s, k)
        ratio = (w != "" && r != "" && r + 0 != 0) ? sprintf("%.2f", w / r) : "n/a"
        printf "| %s | %s | %s | %s | %s |\n", s, label, fmt("warren", s, k, digits), fmt("rabbitmq", s, k, digits), ratio
    }
    function cpu_rows(s) {
        row(s, "broker CPU, % of a core", "broker_cpu_pct", 0)
    }
    function generator_rows(s, per) {
        if (per == "delivery") row(s, "generator CPU µs/delivery", "gen_us_per_delivery", 2)
        else row(s, "generator CPU µs/msg", "gen_us_per_msg", 2)
        row(s, "generator busiest thread, % of a core", "gen_top_thread_pct", 0)
        row(s, "other processes, % of a core", "others_cpu_pct", 0)
    }
    END {
        print "| scenario | metric | Warren | RabbitMQ | Warren/RabbitMQ |"
        print "|---|---|---:|---:|---:|"
        ns = split(scenarios, list, ",")
        for (i = 1; i <= ns; i++) {
            s = list[i]
            if (s == "backlog") {
                row(s, "fill: publish+confirm msg/s, no consumer", "fill_per_s", 0)
                row(s, "fill: broker CPU µs/msg", "fill_broker_us_per_msg", 2)
                row(s, "RSS with the backlog, MiB (5 s after the fill)", "rss_sit_mib", 0)
                row(s, "stop: SIGTERM to exit, ms", "stop_ms", 0)
                row(s, "start: launch to AMQP handshake, ms", "start_ms", 0)
                row(s, "start: launch to queue.declare-ok (passive), ms", "queue_ms", 0)
                row(s, "messages recovered", "recovered", 0)
                row(s, "RSS after the restart, MiB", "rss_restart_mib", 0)
                row(s, "drain: consume+ack msg/s", "drain_per_s", 0)
                row(s, "drain: broker CPU µs/msg", "drain_broker_us_per_msg", 2)
                continue
            }
            if (s == "startup") {
                row(s, "**empty broker: launch to first AMQP handshake, ms**", "start_ms", 1)
                continue
            }
            if (s == "idle-rss") {
                row(s, "**RSS of an empty broker idle after one handshake, MiB**", "idle_rss_mib", 1)
                continue
            }
            if (s == "connections-10k") {
                row(s, "connections open and silent after idling", "conns_alive", 0)
                row(s, "**broker RSS per connection, KiB**", "rss_per_conn_kib", 1)
                row(s, "broker RSS before, MiB", "rss_before_mib", 1)
                row(s, "broker RSS with " conns " idle connections, MiB", "rss_conns_mib", 1)
                row(s, "broker RSS after closing them, MiB", "rss_closed_mib", 1)
                row(s, "connections opened per s", "conns_per_s", 0)
                row(s, "broker CPU per connection opened, µs", "broker_us_per_conn", 0)
                row(s, "generator RSS per connection, KiB", "gen_rss_per_conn_kib", 2)
                continue
            }
            if (s == "fanout") {
                row(s, "**deliveries/s (all 8 queues)**", "consumed_per_s", 0)
                row(s, "published msg/s", "published_per_s", 0)
                row(s, "broker CPU µs/delivery", "broker_us_per_delivery", 2)
                row(s, "broker CPU µs/published msg", "broker_us_per_msg", 2)
                cpu_rows(s)
                row(s, "delivered + left in queues, % of published x 8", "route_check_pct", 2)
                generator_rows(s, "delivery")
                continue
            }
            if (s == "topic-10k") {
                row(s, "**published msg/s**", "published_per_s", 0)
                row(s, "**delivered msg/s**", "consumed_per_s", 0)
                row(s, "broker CPU µs/published msg", "broker_us_per_msg", 2)
                cpu_rows(s)
                row(s, "10,000 bindings created (nowait, pipelined), ms", "bind_ms", 0)
                row(s, "delivered + left in queues, % of what the keys match", "route_check_pct", 2)
                generator_rows(s, "msg")
                continue
            }
            if (s ~ /^latency/) {
                row(s, "p50 latency µs", "p50_us", 0)
                row(s, "p99 latency µs", "p99_us", 0)
                row(s, "p99.9 latency µs", "p999_us", 0)
            } else {
                row(s, "published msg/s", "published_per_s", 0)
                row(s, "consumed msg/s", "consumed_per_s", 0)
            }
            if (s ~ /persistent/) {
                row(s, "publish-to-confirm p50 µs", "confirm_p50_us", 0)
                row(s, "publish-to-confirm p99 µs", "confirm_p99_us", 0)
            }
            row(s, s == "throughput-noack" ? "**broker CPU µs/msg**" : "broker CPU µs/msg", "broker_us_per_msg", 2)
            cpu_rows(s)
            if (s ~ /persistent/) {
                row(s, "broker disk writes, bytes/msg", "broker_disk_bytes_per_msg", 0)
                row(s, "broker fsyncs/s", "fsyncs_per_s", 0)
                row(s, s == "persistent-4x4" ? "**messages per fsync**" : "messages per fsync", "msgs_per_fsync", 1)
            }
            generator_rows(s, "msg")
        }
    }' "$RESULTS"
echo
echo "Median over rounds (startup: over rounds x $STARTUP_REPS starts), ± half the range of the values"
echo "in % of the median. Warren/RabbitMQ above 1 is better for msg/s, below 1 is better for"
echo "latency, CPU, memory and time."
case ",$SCENARIOS," in *,throughput-persistent-quorum,*|*,persistent-4x4,*)
    echo "throughput-persistent-quorum, persistent-4x4: RabbitMQ with quorum queues, Warren with its ordinary durable queues." ;;
esac
case ",$SCENARIOS," in *,backlog,*)
    echo "backlog: $BACKLOG persistent 100-byte messages in one durable (RabbitMQ: classic) queue." ;;
esac
[ "$HAVE_PERF" = 1 ] || echo "fsyncs: perf is not installed (Debian: linux-perf), so they were not counted."
echo
echo "Runs took ${ELAPSED} s. Full output of every run:"
echo
sed 's/^/    /' "$LOG"
exit 0
}
