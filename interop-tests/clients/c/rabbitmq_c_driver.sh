#!/usr/bin/env bash
# Runs scenarios.json with the rabbitmq-c command-line tools (Debian's amqp-tools: amqp-publish,
# amqp-consume, amqp-get, amqp-declare-queue, amqp-delete-queue). Every queue it declares
# starts with "rabbitmq-c.". The tools print only message bodies, publish only some properties
# and cannot declare exchanges, ack selectively, nack, reject or use confirms: such scenarios
# are skipped with the reason. One JSON line per scenario on stdout.
#
# usage: rabbitmq_c_driver.sh [--mode scenarios|cross-publish|cross-consume] [--peers a,b]
set -uo pipefail

CLIENT=rabbitmq-c
N="$CLIENT."
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=${SCENARIOS_JSON:-$HERE/../scenarios.json}
URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
TMP=$(mktemp -d /tmp/rabbitmq-c-driver.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
# The command amqp-consume runs per message (its own options would be taken as the tool's).
printf '#!/bin/sh\ncat >>"$1"; echo >>"$1"\n' >"$TMP/append.sh"
chmod +x "$TMP/append.sh"

json_str() {
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/ }; s=${s//$'\t'/ }; s=${s//$'\r'/ }
    printf '"%s"' "$s"
}
# emit SCENARIO STATUS DETAIL [PUBLISHER]
emit() {
    local extra=""
    [ -n "${4:-}" ] && extra=",\"publisher\":$(json_str "$4")"
    printf '{"client":"%s","scenario":%s,"status":"%s","detail":%s%s}\n' \
        "$CLIENT" "$(json_str "$1")" "$2" "$(json_str "$3")" "$extra"
}

# Tool wrappers; each bounded so a hang becomes a failure, not a stuck driver.
declare_q() { timeout 10 amqp-declare-queue -u "$URL" -q "$1" >/dev/null 2>>"$TMP/err"; }
delete_q() { timeout 10 amqp-delete-queue -u "$URL" -q "$1" >/dev/null 2>>"$TMP/err"; }
publish() { local q=$1; shift; timeout 20 amqp-publish -u "$URL" -r "$q" "$@" 2>>"$TMP/err"; }
get() { timeout 20 amqp-get -u "$URL" -q "$1" 2>>"$TMP/err"; }   # exit 2: queue empty
lasterr() { tail -c 300 "$TMP/err" 2>/dev/null | tr '\n' ' '; }

spec() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$SPEC" "$1"; }
param() { spec "[s for s in d['scenarios'] if s['id']=='$1'][0]['params']['$2']"; }

# --- scenarios: each prints "STATUS<TAB>DETAIL" --------------------------------------------

sc_connect() {
    local q="${N}connect"
    declare_q "$q" || { printf 'fail\tamqp-declare-queue: %s' "$(lasterr)"; return; }
    delete_q "$q"
    printf 'pass\tconnected with the URL, channel opened, queue declared'
}

sc_declare_topology() {
    printf 'skip\tthe tools cannot declare exchanges or pass queue arguments (x-message-ttl, x-max-length)'
}

sc_publish_properties() {
    printf 'skip\tamqp-get/amqp-consume print only the body, and amqp-publish sets only content-type, content-encoding, reply-to, persistent and string headers'
}

sc_consume_ack_prefetch() {
    local q="${N}prefetch" n prefetch i
    n=$(param consume_ack_prefetch messages); prefetch=$(param consume_ack_prefetch prefetch)
    declare_q "$q" || { printf 'fail\tdeclare: %s' "$(lasterr)"; return; }
    for i in $(seq 0 $((n - 1))); do publish "$q" -b "$i" || { printf 'fail\tpublish %s: %s' "$i" "$(lasterr)"; return; }; done
    # amqp-consume runs the command once per message (body on stdin) and acks after it exits.
    : >"$TMP/consumed"
    timeout 20 amqp-consume -u "$URL" -q "$q" -p "$prefetch" -c "$n" \
        "$TMP/append.sh" "$TMP/consumed" 2>>"$TMP/err" \
        || { printf 'fail\tamqp-consume: %s' "$(lasterr)"; delete_q "$q"; return; }
    local want got left
    want=$(seq 0 $((n - 1)) | tr '\n' ' ')
    got=$(tr '\n' ' ' <"$TMP/consumed")
    get "$q" >/dev/null; left=$?
    delete_q "$q"
    [ "$got" = "$want" ] || { printf 'fail\tconsumed order/contents: %s' "$got"; return; }
    [ $left = 2 ] || { printf 'fail\tqueue not empty after consuming'; return; }
    printf 'skip\t%s consumed in order with prefetch %s and acks, queue empty (checked); how many were in flight before the first ack is not observable with amqp-consume' "$n" "$prefetch"
}

sc_get() {
    local q="${N}get" body rc
    declare_q "$q" || { printf 'fail\tdeclare: %s' "$(lasterr)"; return; }
    publish "$q" -b get-me || { printf 'fail\tpublish: %s' "$(lasterr)"; return; }
    body=$(get "$q"); rc=$?
    get "$q" >/dev/null; local rc2=$?
    delete_q "$q"
    [ $rc = 0 ] && [ "$body" = get-me ] || { printf 'fail\tfirst get: rc %s body %s %s' "$rc" "$body" "$(lasterr)"; return; }
    [ $rc2 = 2 ] || { printf 'fail\tsecond get: rc %s, want 2 (get-empty)' "$rc2"; return; }
    printf 'pass\tget-ok with the body, then get-empty (amqp-get does not show message_count or redelivered)'
}

sc_nack_requeue() { printf 'skip\tthe tools cannot nack: amqp-get and amqp-consume only ack'; }
sc_reject_dlx() { printf 'skip\tthe tools cannot reject, nor declare a queue with x-dead-letter-exchange'; }
sc_delivery_limit_dlq() { printf 'skip\tthe tools cannot declare a quorum queue with arguments, nor nack'; }
sc_publisher_confirms() { printf 'skip\tamqp-publish does not use publisher confirms'; }
sc_mandatory_return() { printf 'skip\tamqp-publish has no mandatory flag'; }
sc_server_cancel() {
    printf 'skip\tamqp-consume does not report a server-sent basic.cancel (it keeps waiting after the queue is deleted)'
}

sc_empty_body() {
    local q="${N}empty" ct size rc
    ct=$(param empty_body content_type)
    declare_q "$q" || { printf 'fail\tdeclare: %s' "$(lasterr)"; return; }
    publish "$q" -C "$ct" </dev/null || { printf 'fail\tpublish: %s' "$(lasterr)"; return; }
    get "$q" >"$TMP/empty"; rc=$?
    delete_q "$q"
    size=$(stat -c %s "$TMP/empty")
    [ $rc = 0 ] || { printf 'fail\tget: rc %s %s' "$rc" "$(lasterr)"; return; }
    [ "$size" = 0 ] || { printf 'fail\tbody %s bytes' "$size"; return; }
    printf 'pass\t0-byte body published (content-type %s) and got back (amqp-get does not show the content type)' "$ct"
}

sc_large_body() {
    local q="${N}large" size mod rc want got
    size=$(param large_body size); mod=$(param large_body modulus)
    python3 -c "import sys; sys.stdout.buffer.write(bytes(i % $mod for i in range($size)))" >"$TMP/large.in"
    declare_q "$q" || { printf 'fail\tdeclare: %s' "$(lasterr)"; return; }
    publish "$q" <"$TMP/large.in" || { printf 'fail\tpublish: %s' "$(lasterr)"; return; }
    get "$q" >"$TMP/large.out"; rc=$?
    delete_q "$q"
    [ $rc = 0 ] || { printf 'fail\tget: rc %s %s' "$rc" "$(lasterr)"; return; }
    want=$(sha256sum <"$TMP/large.in" | cut -d' ' -f1); got=$(sha256sum <"$TMP/large.out" | cut -d' ' -f1)
    [ "$want" = "$got" ] || { printf 'fail\tlength %s, sha256 differs' "$(stat -c %s "$TMP/large.out")"; return; }
    printf 'pass\t%s bytes unchanged' "$(stat -c %s "$TMP/large.out")"
}

sc_heartbeat_idle() {
    local q="${N}heartbeat" hb idle pid rc
    hb=$(param heartbeat_idle heartbeat_s); idle=$(param heartbeat_idle idle_s)
    declare_q "$q" || { printf 'fail\tdeclare: %s' "$(lasterr)"; return; }
    : >"$TMP/hb"
    timeout $((idle + 10)) amqp-consume -u "$URL" --heartbeat="$hb" -q "$q" -c 1 \
        "$TMP/append.sh" "$TMP/hb" 2>>"$TMP/err" &
    pid=$!
    sleep "$idle"
    if ! kill -0 $pid 2>/dev/null; then
        wait $pid; printf 'fail\tamqp-consume (heartbeat %s) exited while idle: rc %s %s' "$hb" "$?" "$(lasterr)"; delete_q "$q"; return
    fi
    publish "$q" -b alive || { printf 'fail\tpublish: %s' "$(lasterr)"; return; }
    wait $pid; rc=$?
    delete_q "$q"
    [ $rc = 0 ] && [ "$(cat "$TMP/hb")" = alive ] || { printf 'fail\tafter %s s idle: rc %s body %s %s' "$idle" "$rc" "$(cat "$TMP/hb")" "$(lasterr)"; return; }
    printf 'pass\tconsumer with heartbeat %s s still delivered after %s s idle (the negotiated value is not shown by the tools)' "$hb" "$idle"
}

sc_clean_close() {
    # Every tool closes its channel and connection and exits non-zero if either close fails.
    local q="${N}close"
    declare_q "$q" || { printf 'fail\tamqp-declare-queue: %s' "$(lasterr)"; return; }
    delete_q "$q" || { printf 'fail\tamqp-delete-queue: %s' "$(lasterr)"; return; }
    printf 'pass\tchannel.close and connection.close completed (tools exit 0)'
}

run() {
    local id=$1 out status detail
    out=$("sc_$id"); status=${out%%$'\t'*}; detail=${out#*$'\t'}
    emit "$id" "$status" "$detail"
}

# --- cross-client ----------------------------------------------------------------------------

cross_queue() { printf '%s.cross.to.%s' "$1" "$2"; }

cross_publish() {
    # amqp-publish cannot set priority, correlation-id, expiration, message-id, timestamp, type,
    # user-id or app-id, nor any header that is not a string: the canonical message is out of reach.
    emit cross_publish skip "amqp-publish cannot set most basic properties (priority, correlation-id, message-id, timestamp, ...) nor typed or nested headers, so it cannot publish the canonical message"
}

cross_consume() {
    local pub=$1 q body rc
    q=$(cross_queue "$pub" "$CLIENT")
    spec "d['canonical_message']['body']" >"$TMP/canon"
    declare_q "$q" || { emit cross fail "declare $q: $(lasterr)" "$pub"; return; }
    for _ in $(seq 1 50); do
        get "$q" >"$TMP/cross"; rc=$?
        [ $rc = 2 ] || break
        sleep 0.1
    done
    delete_q "$q"
    if [ $rc != 0 ]; then emit cross fail "nothing in $q (rc $rc) $(lasterr)" "$pub"; return; fi
    # spec() printed the body with a trailing newline.
    if [ "$(cat "$TMP/cross")" != "$(cat "$TMP/canon")" ] || [ "$(stat -c %s "$TMP/cross")" != "$(($(stat -c %s "$TMP/canon") - 1))" ]; then
        emit cross fail "body differs: $(head -c 200 "$TMP/cross")" "$pub"; return
    fi
    emit cross skip "body unchanged; amqp-get shows no properties or headers, so the rest is not checked" "$pub"
}

MODE=scenarios PEERS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) shift ;;
    esac
done

case "$MODE" in
    cross-publish) cross_publish ;;
    cross-consume) for p in ${PEERS//,/ }; do cross_consume "$p"; done ;;
    *)
        for id in $(spec "' '.join(s['id'] for s in d['scenarios'])"); do
            [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$id,"* ]] && continue
            run "$id"
        done ;;
esac
