"""Runs scenarios.json with pika's BlockingConnection (the synchronous API most pika users
have). Every name it declares starts with "pika.". Each scenario is bounded by SIGALRM."""

import signal
import time

import pika
import pika.exceptions

import common
from common import Fail, Skip

CLIENT = "pika"
SPEC = common.load()
N = CLIENT + "."


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("scenario timed out")


def connect(url=None):
    params = pika.URLParameters(url or common.amqp_url())
    params.socket_timeout = 5
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def props_of(p):
    return {
        "content_type": p.content_type, "content_encoding": p.content_encoding,
        "delivery_mode": p.delivery_mode, "priority": p.priority,
        "correlation_id": p.correlation_id, "reply_to": p.reply_to,
        "expiration": p.expiration, "message_id": p.message_id, "timestamp": p.timestamp,
        "type": p.type, "user_id": p.user_id, "app_id": p.app_id,
    }


def canonical_properties():
    c = SPEC["canonical_message"]
    p = dict(c["properties"])
    return pika.BasicProperties(headers=c["headers"], **p)


def wait_for(conn, predicate, limit=10.0):
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        conn.process_data_events(time_limit=0.05)
    return True


def get_eventually(conn, ch, queue, limit=5.0):
    """basic.get until a message arrives (dead-lettering is asynchronous in RabbitMQ)."""
    deadline = time.monotonic() + limit
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is not None:
            return method, props, body
        if time.monotonic() > deadline:
            return None, None, None
        conn.sleep(0.05)


# --- scenarios -------------------------------------------------------------------------------

def s_connect(p):
    conn = connect()
    ch = conn.channel()
    ok = conn.is_open and ch.is_open
    conn.close()
    if not ok:
        raise Fail("connection or channel not open")
    return "connection and channel open"


def s_declare_topology(p):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = N + "topology"
    exchanges = {t: f"{N}{t}" for t in ("direct", "fanout", "topic", "headers")}
    for t, name in exchanges.items():
        ch.exchange_declare(name, exchange_type=t)
    ch.queue_declare(q, arguments=p["queue_arguments"])
    ch.queue_bind(q, exchanges["direct"], routing_key=p["direct_key"])
    ch.queue_bind(q, exchanges["fanout"], routing_key="")
    ch.queue_bind(q, exchanges["topic"], routing_key=p["topic_pattern"])
    ch.queue_bind(q, exchanges["headers"], routing_key="", arguments=p["headers_binding"])
    hdrs = {k: v for k, v in p["headers_binding"].items() if not k.startswith("x-")}
    ch.basic_publish(exchanges["direct"], p["direct_key"], b"direct")
    ch.basic_publish(exchanges["fanout"], "ignored", b"fanout")
    ch.basic_publish(exchanges["topic"], p["topic_key"], b"topic")
    ch.basic_publish(exchanges["headers"], "", b"headers",
                     pika.BasicProperties(headers=hdrs))
    got = []
    for _ in range(4):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        got.append(body.decode() if method else None)
    if got != ["direct", "fanout", "topic", "headers"]:
        raise Fail(f"routed bodies {got}")
    for i in range(p["overfill"]):
        ch.basic_publish("", q, f"m{i}".encode())
    count = ch.queue_declare(q, passive=True).method.message_count
    if count != p["max_length"]:
        raise Fail(f"message_count {count} after overfill, want {p['max_length']}")
    method, _props, body = ch.basic_get(q, auto_ack=True)
    first = f"m{p['overfill'] - p['max_length']}".encode()
    if body != first:
        raise Fail(f"head after overfill {body!r}, want {first!r}")
    args = dict(p["queue_arguments"], **{"x-max-length": p["conflicting_max_length"]})
    try:
        ch.queue_declare(q, arguments=args)
        raise Fail("inequivalent redeclare succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != p["reply_code"]:
            raise Fail(f"inequivalent redeclare closed the channel with {e.reply_code}")
        closed = f"{e.reply_code} {e.reply_text}"
    ch = conn.channel()
    ch.queue_delete(q)
    for name in exchanges.values():
        ch.exchange_delete(name)
    conn.close()
    return f"4 exchange types routed; max-length kept {count}; redeclare: {closed}"


def s_publish_properties(p):
    conn = connect()
    ch = conn.channel()
    q = N + "props"
    ch.queue_declare(q)
    ch.basic_publish("", q, common.canonical_body(SPEC), canonical_properties())
    method, props, body = get_eventually(conn, ch, q)
    if method is None:
        raise Fail("message not in queue")
    ch.basic_ack(method.delivery_tag)
    ch.queue_delete(q)
    conn.close()
    diffs = common.compare_canonical(SPEC, body, props_of(props), props.headers)
    if diffs:
        raise Fail("; ".join(diffs))
    return "body, 12 properties and headers unchanged"


def s_consume_ack_prefetch(p):
    conn = connect()
    ch = conn.channel()
    q = N + "prefetch"
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(p["messages"]):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=p["prefetch"])
    received = []
    ch.basic_consume(q, lambda c, m, pr, b: received.append((m, b)), auto_ack=False)
    wait_for(conn, lambda: len(received) >= p["prefetch"])
    conn.process_data_events(time_limit=p["hold_ms"] / 1000)
    before_ack = len(received)
    if before_ack != p["prefetch"]:
        raise Fail(f"{before_ack} delivered before any ack, want {p['prefetch']}")
    acked = 0
    while acked < p["messages"]:
        if acked >= len(received):
            if not wait_for(conn, lambda: len(received) > acked, 5):
                raise Fail(f"stalled after {acked} acks, {len(received)} received")
        ch.basic_ack(received[acked][0].delivery_tag)
        acked += 1
    conn.process_data_events(time_limit=0.2)
    bodies = [int(b) for _, b in received]
    if bodies != list(range(p["messages"])):
        raise Fail(f"order/contents {bodies}")
    if any(m.redelivered for m, _ in received):
        raise Fail("a message was redelivered")
    ch2 = conn.channel()
    left = ch2.queue_declare(q, passive=True).method.message_count
    ch2.queue_delete(q)
    conn.close()
    if left != 0:
        raise Fail(f"{left} messages left")
    return f"{before_ack} in flight before acks; {len(bodies)} in order"


def s_get(p):
    conn = connect()
    ch = conn.channel()
    q = N + "get"
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"get-me")
    method, _props, body = ch.basic_get(q, auto_ack=False)
    if method is None or body != b"get-me":
        raise Fail(f"first get: {method!r} {body!r}")
    if method.message_count != 0 or method.redelivered:
        raise Fail(f"message_count {method.message_count}, redelivered {method.redelivered}")
    ch.basic_ack(method.delivery_tag)
    method2, _, _ = ch.basic_get(q, auto_ack=False)
    ch.queue_delete(q)
    conn.close()
    if method2 is not None:
        raise Fail("second get was not get-empty")
    return "get-ok (message_count 0) then get-empty"


def s_nack_requeue(p):
    conn = connect()
    ch = conn.channel()
    q = N + "nack"
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"nack-me")
    m1, _, b1 = ch.basic_get(q, auto_ack=False)
    if m1 is None:
        raise Fail("no message")
    ch.basic_nack(m1.delivery_tag, requeue=True)
    m2, _, b2 = get_eventually(conn, ch, q)
    if m2 is None:
        raise Fail("message not requeued")
    ch.basic_ack(m2.delivery_tag)
    ch.queue_delete(q)
    conn.close()
    if m1.redelivered or not m2.redelivered or b2 != b1:
        raise Fail(f"redelivered {m1.redelivered}->{m2.redelivered}, bodies {b1!r} {b2!r}")
    return "requeued with redelivered=true"


def s_reject_dlx(p):
    conn = connect()
    ch = conn.channel()
    dlx, dlq, q = N + "dlx", N + "dlq", N + "work"
    ch.exchange_declare(dlx, exchange_type="fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"reject-me")
    m, _, _ = ch.basic_get(q, auto_ack=False)
    if m is None:
        raise Fail("no message")
    ch.basic_reject(m.delivery_tag, requeue=False)
    dm, dprops, dbody = get_eventually(conn, ch, dlq)
    if dm is None:
        raise Fail("nothing in the dead-letter queue")
    ch.basic_ack(dm.delivery_tag)
    for name in (q, dlq):
        ch.queue_delete(name)
    ch.exchange_delete(dlx)
    conn.close()
    if dbody != b"reject-me":
        raise Fail(f"dead-lettered body {dbody!r}")
    d = common.x_death_check(dprops.headers, p["reason"], q, count=1, exchange="",
                             routing_keys=[q])
    return f"x-death reason {d['reason']}, count {d.get('count')}"


def s_delivery_limit_dlq(p):
    conn = connect()
    ch = conn.channel()
    dlx, dlq, q = N + "dlx2", N + "dlq2", N + "limited"
    ch.exchange_declare(dlx, exchange_type="fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": p["delivery_limit"],
        "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"limit-me")
    deliveries = 0
    while True:
        m, _, _ = get_eventually(conn, ch, q, limit=1.0)
        if m is None:
            break
        deliveries += 1
        if deliveries > p["deliveries"] + 2:
            break
        ch.basic_nack(m.delivery_tag, requeue=True)
    dm, dprops, _ = get_eventually(conn, ch, dlq)
    if dm is not None:
        ch.basic_ack(dm.delivery_tag)
    for name in (q, dlq):
        ch.queue_delete(name)
    ch.exchange_delete(dlx)
    conn.close()
    if deliveries != p["deliveries"]:
        raise Fail(f"delivered {deliveries} times, want {p['deliveries']}")
    if dm is None:
        raise Fail("nothing in the dead-letter queue")
    d = common.x_death_check(dprops.headers, p["reason"], q)
    return f"{deliveries} deliveries, then x-death reason {d['reason']}"


def s_publisher_confirms(p):
    conn = connect()
    ch = conn.channel()
    q = N + "confirms"
    ch.queue_declare(q)
    ch.confirm_delivery()
    # With confirms on, BlockingChannel.basic_publish returns only once the broker acked,
    # and raises NackError on a nack.
    for i in range(p["messages"]):
        ch.basic_publish("", q, str(i).encode())
    count = ch.queue_declare(q, passive=True).method.message_count
    ch.queue_delete(q)
    conn.close()
    if count != p["messages"]:
        raise Fail(f"{count} messages in queue")
    return f"{p['messages']} acked"


def s_mandatory_return(p):
    conn = connect()
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, pr, b: returned.append((m, b)))
    key = N + "nowhere"
    ch.basic_publish("", key, b"bounce", mandatory=True)
    wait_for(conn, lambda: returned, 5)
    conn.close()
    if not returned:
        raise Fail("no basic.return")
    m, b = returned[0]
    if (m.reply_code, m.reply_text, m.routing_key, b) != (p["reply_code"], p["reply_text"], key,
                                                          b"bounce"):
        raise Fail(f"return {m.reply_code} {m.reply_text} {m.routing_key} {b!r}")
    return f"basic.return {m.reply_code} {m.reply_text}"


def s_server_cancel(p):
    conn = connect()
    ch = conn.channel()
    q = N + "cancelme"
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=False)
    other = conn.channel()
    other.queue_delete(q)
    wait_for(conn, lambda: cancelled, 5)
    open_after = ch.is_open
    conn.close()
    if not cancelled:
        raise Fail("no basic.cancel from the server")
    got = cancelled[0].method.consumer_tag
    if got != tag:
        raise Fail(f"cancel for {got}, consumer was {tag}")
    if not open_after:
        raise Fail("consuming channel closed")
    return "basic.cancel received; channel open"


def s_empty_body(p):
    conn = connect()
    ch = conn.channel()
    q = N + "empty"
    ch.queue_declare(q)
    ch.basic_publish("", q, b"", pika.BasicProperties(content_type=p["content_type"]))
    m, props, body = get_eventually(conn, ch, q)
    ch.queue_delete(q)
    conn.close()
    if m is None:
        raise Fail("no message")
    if body != b"" or props.content_type != p["content_type"]:
        raise Fail(f"body {len(body)} bytes, content type {props.content_type!r}")
    return "0-byte body"


def s_large_body(p):
    conn = connect()
    ch = conn.channel()
    q = N + "large"
    ch.queue_declare(q)
    data = common.large_body(p)
    ch.basic_publish("", q, data)
    m, _, body = get_eventually(conn, ch, q, limit=10)
    ch.queue_delete(q)
    conn.close()
    if m is None:
        raise Fail("no message")
    if len(body) != len(data) or common.sha256(body) != common.sha256(data):
        raise Fail(f"length {len(body)}, sha256 differs")
    return f"{len(body)} bytes unchanged"


def s_heartbeat_idle(p):
    conn = connect(common.with_query(common.amqp_url(), heartbeat=p["heartbeat_s"]))
    negotiated = conn._impl.params.heartbeat  # set to the tuned value after connection.tune
    if negotiated != p["heartbeat_s"]:
        conn.close()
        raise Fail(f"negotiated heartbeat {negotiated}")
    conn.sleep(p["idle_s"])  # keeps pika's I/O loop (and its heartbeats) running
    if not conn.is_open:
        raise Fail("connection closed while idle")
    ch = conn.channel()
    q = N + "heartbeat"
    ch.queue_declare(q)
    ch.basic_publish("", q, b"alive")
    m, _, body = get_eventually(conn, ch, q)
    ch.queue_delete(q)
    conn.close()
    if body != b"alive":
        raise Fail(f"round trip after idle: {body!r}")
    return f"heartbeat {negotiated}s; usable after {p['idle_s']}s idle"


def s_clean_close(p):
    conn = connect()
    ch = conn.channel()
    ch.close()
    conn.close()
    if not conn.is_closed or ch.is_open:
        raise Fail("not closed")
    return "channel and connection closed"


# --- cross-client ----------------------------------------------------------------------------

def cross_publish(consumers):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for consumer in consumers:
        q = common.cross_queue(SPEC, CLIENT, consumer)
        ch.queue_declare(q)
        ch.basic_publish("", q, common.canonical_body(SPEC), canonical_properties())
    conn.close()
    return f"published to {len(consumers)} queues"


def cross_consume(publisher):
    conn = connect()
    ch = conn.channel()
    q = common.cross_queue(SPEC, publisher, CLIENT)
    m, props, body = get_eventually(conn, ch, q)
    if m is None:
        conn.close()
        raise Fail(f"nothing in {q}")
    ch.basic_ack(m.delivery_tag)
    ch.queue_delete(q)
    conn.close()
    diffs = common.compare_canonical(SPEC, body, props_of(props), props.headers)
    if diffs:
        raise Fail("; ".join(diffs))
    return "unchanged"


def run(scenario, fn, timeout, **extra):
    signal.alarm(int(timeout))
    try:
        detail = fn()
        common.emit(CLIENT, scenario, "pass", detail, **extra)
    except Skip as e:
        common.emit(CLIENT, scenario, "skip", str(e), **extra)
    except Exception as e:  # a failed expectation, a client error or the timeout
        common.emit(CLIENT, scenario, "fail", f"{type(e).__name__}: {e}", **extra)
    finally:
        signal.alarm(0)


def main():
    args = common.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    peers = [x for x in args.peers.split(",") if x]
    cross_timeout = SPEC["cross_client"]["timeout_s"]
    if args.mode == "cross-publish":
        run("cross_publish", lambda: cross_publish(peers), cross_timeout)
        return
    if args.mode == "cross-consume":
        for pub in peers:
            run("cross", lambda: cross_consume(pub), cross_timeout, publisher=pub)
        return
    only = set(x for x in args.only.split(",") if x)
    for sc in SPEC["scenarios"]:
        if only and sc["id"] not in only:
            continue
        fn = globals()["s_" + sc["id"]]
        run(sc["id"], lambda: fn(sc["params"]), sc["timeout_s"])


if __name__ == "__main__":
    main()
