"""Runs scenarios.json with aio-pika (asyncio, on aiormq). Every name it declares starts with
"aio-pika.". Each scenario is bounded by asyncio.wait_for."""

import asyncio
import datetime

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions

import common
from common import Fail, Skip

CLIENT = "aio-pika"
SPEC = common.load()
N = CLIENT + "."


async def connect(url=None):
    return await aio_pika.connect(url or common.amqp_url(), timeout=10)


def props_of(m):
    """Properties as an aio-pika user reads them, turned back into wire form: aio-pika decodes
    expiration to seconds (float) and timestamp to a datetime."""
    return {
        "content_type": m.content_type, "content_encoding": m.content_encoding,
        "delivery_mode": int(m.delivery_mode) if m.delivery_mode is not None else None,
        "priority": m.priority, "correlation_id": m.correlation_id, "reply_to": m.reply_to,
        "expiration": (str(int(round(m.expiration * 1000)))
                       if m.expiration is not None else None),
        "message_id": m.message_id, "timestamp": m.timestamp, "type": m.type,
        "user_id": m.user_id, "app_id": m.app_id,
    }


def canonical_message():
    c = SPEC["canonical_message"]
    p = dict(c["properties"])
    p["expiration"] = int(p["expiration"]) / 1000  # aio-pika takes seconds
    p["timestamp"] = datetime.datetime.fromtimestamp(p["timestamp"], tz=datetime.timezone.utc)
    return aio_pika.Message(common.canonical_body(SPEC), headers=c["headers"], **p)


async def get_eventually(queue, limit=5.0):
    """basic.get until a message arrives (dead-lettering is asynchronous in RabbitMQ)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        m = await queue.get(no_ack=False, fail=False)
        if m is not None:
            return m
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.05)


async def wait_for(predicate, limit=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def publish(channel, routing_key, body, **props):
    await channel.default_exchange.publish(aio_pika.Message(body, **props), routing_key)


# --- scenarios -------------------------------------------------------------------------------

async def s_connect(p):
    conn = await connect()
    ch = await conn.channel()
    ok = not conn.is_closed and not ch.is_closed
    await conn.close()
    if not ok:
        raise Fail("connection or channel not open")
    return "connection and channel open"


async def s_declare_topology(p):
    conn = await connect()
    ch = await conn.channel()  # publisher confirms are on by default
    exchanges = {}
    for t in ("direct", "fanout", "topic", "headers"):
        exchanges[t] = await ch.declare_exchange(N + t, aio_pika.ExchangeType(t))
    q = await ch.declare_queue(N + "topology", arguments=p["queue_arguments"])
    await q.bind(exchanges["direct"], routing_key=p["direct_key"])
    await q.bind(exchanges["fanout"], routing_key="")
    await q.bind(exchanges["topic"], routing_key=p["topic_pattern"])
    await q.bind(exchanges["headers"], routing_key="", arguments=p["headers_binding"])
    hdrs = {k: v for k, v in p["headers_binding"].items() if not k.startswith("x-")}
    await exchanges["direct"].publish(aio_pika.Message(b"direct"), p["direct_key"])
    await exchanges["fanout"].publish(aio_pika.Message(b"fanout"), "ignored")
    await exchanges["topic"].publish(aio_pika.Message(b"topic"), p["topic_key"])
    await exchanges["headers"].publish(aio_pika.Message(b"headers", headers=hdrs), "")
    got = []
    for _ in range(4):
        m = await q.get(no_ack=True, fail=False)
        got.append(m.body.decode() if m else None)
    if got != ["direct", "fanout", "topic", "headers"]:
        raise Fail(f"routed bodies {got}")
    for i in range(p["overfill"]):
        await publish(ch, q.name, f"m{i}".encode())
    declared = await ch.declare_queue(q.name, passive=True)
    count = declared.declaration_result.message_count
    if count != p["max_length"]:
        raise Fail(f"message_count {count} after overfill, want {p['max_length']}")
    m = await q.get(no_ack=True)
    first = f"m{p['overfill'] - p['max_length']}".encode()
    if m.body != first:
        raise Fail(f"head after overfill {m.body!r}, want {first!r}")
    args = dict(p["queue_arguments"], **{"x-max-length": p["conflicting_max_length"]})
    try:
        await ch.declare_queue(q.name, arguments=args)
        raise Fail("inequivalent redeclare succeeded")
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        closed = f"406 {e}"
    ch = await conn.channel()
    await ch.queue_delete(q.name)
    for e in exchanges.values():
        await ch.exchange_delete(e.name)
    await conn.close()
    return f"4 exchange types routed; max-length kept {count}; redeclare: {closed}"


async def s_publish_properties(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "props")
    await ch.default_exchange.publish(canonical_message(), q.name)
    m = await get_eventually(q)
    if m is None:
        raise Fail("message not in queue")
    await m.ack()
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    diffs = common.compare_canonical(SPEC, m.body, props_of(m), m.headers)
    if diffs:
        raise Fail("; ".join(diffs))
    return "body, 12 properties and headers unchanged"


async def s_consume_ack_prefetch(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "prefetch")
    for i in range(p["messages"]):
        await publish(ch, q.name, str(i).encode())
    await ch.set_qos(prefetch_count=p["prefetch"])
    received = []

    async def on_message(m):
        received.append(m)

    await q.consume(on_message, no_ack=False)
    await wait_for(lambda: len(received) >= p["prefetch"])
    await asyncio.sleep(p["hold_ms"] / 1000)
    before_ack = len(received)
    if before_ack != p["prefetch"]:
        raise Fail(f"{before_ack} delivered before any ack, want {p['prefetch']}")
    acked = 0
    while acked < p["messages"]:
        if acked >= len(received):
            if not await wait_for(lambda: len(received) > acked, 5):
                raise Fail(f"stalled after {acked} acks, {len(received)} received")
        await received[acked].ack()
        acked += 1
    await asyncio.sleep(0.2)
    bodies = [int(m.body) for m in received]
    if bodies != list(range(p["messages"])):
        raise Fail(f"order/contents {bodies}")
    if any(m.redelivered for m in received):
        raise Fail("a message was redelivered")
    ch2 = await conn.channel()
    left = (await ch2.declare_queue(q.name, passive=True)).declaration_result.message_count
    await ch2.queue_delete(q.name)
    await conn.close()
    if left != 0:
        raise Fail(f"{left} messages left")
    return f"{before_ack} in flight before acks; {len(bodies)} in order"


async def s_get(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "get")
    await publish(ch, q.name, b"get-me")
    m = await q.get(no_ack=False, fail=False)
    if m is None or m.body != b"get-me":
        raise Fail(f"first get: {m!r}")
    if m.message_count != 0 or m.redelivered:
        raise Fail(f"message_count {m.message_count}, redelivered {m.redelivered}")
    await m.ack()
    m2 = await q.get(no_ack=False, fail=False)
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if m2 is not None:
        raise Fail("second get was not get-empty")
    return "get-ok (message_count 0) then get-empty"


async def s_nack_requeue(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "nack")
    await publish(ch, q.name, b"nack-me")
    m1 = await q.get(no_ack=False, fail=False)
    if m1 is None:
        raise Fail("no message")
    await m1.nack(requeue=True)
    m2 = await get_eventually(q)
    if m2 is None:
        raise Fail("message not requeued")
    await m2.ack()
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if m1.redelivered or not m2.redelivered or m2.body != m1.body:
        raise Fail(f"redelivered {m1.redelivered}->{m2.redelivered}")
    return "requeued with redelivered=true"


async def dlx_pair(ch, suffix):
    dlx = await ch.declare_exchange(N + "dlx" + suffix, aio_pika.ExchangeType.FANOUT)
    dlq = await ch.declare_queue(N + "dlq" + suffix)
    await dlq.bind(dlx)
    return dlx, dlq


async def s_reject_dlx(p):
    conn = await connect()
    ch = await conn.channel()
    dlx, dlq = await dlx_pair(ch, "")
    q = await ch.declare_queue(N + "work", arguments={"x-dead-letter-exchange": dlx.name})
    await publish(ch, q.name, b"reject-me")
    m = await q.get(no_ack=False, fail=False)
    if m is None:
        raise Fail("no message")
    await m.reject(requeue=False)
    d = await get_eventually(dlq)
    if d is not None:
        await d.ack()
    await q.delete(if_unused=False, if_empty=False)
    await dlq.delete(if_unused=False, if_empty=False)
    await dlx.delete()
    await conn.close()
    if d is None:
        raise Fail("nothing in the dead-letter queue")
    if d.body != b"reject-me":
        raise Fail(f"dead-lettered body {d.body!r}")
    death = common.x_death_check(d.headers, p["reason"], q.name, count=1, exchange="",
                                 routing_keys=[q.name])
    return f"x-death reason {death['reason']}, count {death.get('count')}"


async def s_delivery_limit_dlq(p):
    conn = await connect()
    ch = await conn.channel()
    dlx, dlq = await dlx_pair(ch, "2")
    q = await ch.declare_queue(N + "limited", durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": p["delivery_limit"],
        "x-dead-letter-exchange": dlx.name})
    await publish(ch, q.name, b"limit-me")
    deliveries = 0
    while True:
        m = await get_eventually(q, limit=1.0)
        if m is None:
            break
        deliveries += 1
        if deliveries > p["deliveries"] + 2:
            break
        await m.nack(requeue=True)
    d = await get_eventually(dlq)
    if d is not None:
        await d.ack()
    await q.delete(if_unused=False, if_empty=False)
    await dlq.delete(if_unused=False, if_empty=False)
    await dlx.delete()
    await conn.close()
    if deliveries != p["deliveries"]:
        raise Fail(f"delivered {deliveries} times, want {p['deliveries']}")
    if d is None:
        raise Fail("nothing in the dead-letter queue")
    death = common.x_death_check(d.headers, p["reason"], q.name)
    return f"{deliveries} deliveries, then x-death reason {death['reason']}"


async def s_publisher_confirms(p):
    conn = await connect()
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue(N + "confirms")
    confirms = await asyncio.gather(*[
        ch.default_exchange.publish(aio_pika.Message(str(i).encode()), q.name)
        for i in range(p["messages"])])
    acks = sum(1 for c in confirms if isinstance(c, aiormq.spec.Basic.Ack))
    count = (await ch.declare_queue(q.name, passive=True)).declaration_result.message_count
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if acks != p["messages"]:
        raise Fail(f"{acks} acks: {set(type(c).__name__ for c in confirms)}")
    if count != p["messages"]:
        raise Fail(f"{count} messages in queue")
    return f"{acks} acked"


async def s_mandatory_return(p):
    conn = await connect()
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    key = N + "nowhere"
    try:
        await ch.default_exchange.publish(
            aio_pika.Message(b"bounce", message_id="bounce-1"), key, mandatory=True)
        raise Fail("publish was not returned")
    except aiormq.exceptions.PublishError as e:
        r = e.message.delivery
        body = e.message.body
    finally:
        await conn.close()
    if (r.reply_code, r.reply_text, r.routing_key, body) != (p["reply_code"], p["reply_text"],
                                                             key, b"bounce"):
        raise Fail(f"return {r.reply_code} {r.reply_text} {r.routing_key} {body!r}")
    return f"basic.return {r.reply_code} {r.reply_text}"


async def s_server_cancel(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "cancelme")
    cancelled = []
    # aio-pika's own Channel does not surface a server cancel; its aiormq channel does (the
    # same hook aio-pika's RobustChannel uses).
    ch.channel.on_consumer_cancel_callbacks.add(lambda frame: cancelled.append(frame))
    tag = await q.consume(lambda m: None, no_ack=False)
    other = await conn.channel()
    await other.queue_delete(q.name)
    await wait_for(lambda: cancelled, 5)
    open_after = not ch.is_closed
    await conn.close()
    if not cancelled:
        raise Fail("no basic.cancel from the server")
    if cancelled[0].consumer_tag != tag:
        raise Fail(f"cancel for {cancelled[0].consumer_tag}, consumer was {tag}")
    if not open_after:
        raise Fail("consuming channel closed")
    return "basic.cancel received; channel open"


async def s_empty_body(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "empty")
    await publish(ch, q.name, b"", content_type=p["content_type"])
    m = await get_eventually(q)
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if m is None:
        raise Fail("no message")
    if m.body != b"" or m.content_type != p["content_type"]:
        raise Fail(f"body {len(m.body)} bytes, content type {m.content_type!r}")
    return "0-byte body"


async def s_large_body(p):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(N + "large")
    data = common.large_body(p)
    await publish(ch, q.name, data)
    m = await get_eventually(q, limit=10)
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if m is None:
        raise Fail("no message")
    if len(m.body) != len(data) or common.sha256(m.body) != common.sha256(data):
        raise Fail(f"length {len(m.body)}, sha256 differs")
    return f"{len(m.body)} bytes unchanged"


async def s_heartbeat_idle(p):
    conn = await connect(common.with_query(common.amqp_url(), heartbeat=p["heartbeat_s"]))
    # aiormq answers connection.tune with the heartbeat from the URL.
    negotiated = conn.transport.connection.heartbeat_timeout
    if negotiated != p["heartbeat_s"]:
        await conn.close()
        raise Fail(f"negotiated heartbeat {negotiated}")
    await asyncio.sleep(p["idle_s"])
    if conn.is_closed:
        raise Fail("connection closed while idle")
    ch = await conn.channel()
    q = await ch.declare_queue(N + "heartbeat")
    await publish(ch, q.name, b"alive")
    m = await get_eventually(q)
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if m is None or m.body != b"alive":
        raise Fail(f"round trip after idle: {m!r}")
    return f"heartbeat {negotiated}s; usable after {p['idle_s']}s idle"


async def s_clean_close(p):
    conn = await connect()
    ch = await conn.channel()
    await ch.close()
    await conn.close()
    if not conn.is_closed or not ch.is_closed:
        raise Fail("not closed")
    return "channel and connection closed"


# --- cross-client ----------------------------------------------------------------------------

async def cross_publish(consumers):
    conn = await connect()
    ch = await conn.channel()
    for consumer in consumers:
        q = await ch.declare_queue(common.cross_queue(SPEC, CLIENT, consumer))
        await ch.default_exchange.publish(canonical_message(), q.name)
    await conn.close()
    return f"published to {len(consumers)} queues"


async def cross_consume(publisher):
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(common.cross_queue(SPEC, publisher, CLIENT))
    m = await get_eventually(q)
    if m is None:
        await conn.close()
        raise Fail(f"nothing in {q.name}")
    await m.ack()
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    diffs = common.compare_canonical(SPEC, m.body, props_of(m), m.headers)
    if diffs:
        raise Fail("; ".join(diffs))
    return "unchanged"


async def run(scenario, make, timeout, **extra):
    try:
        detail = await asyncio.wait_for(make(), timeout)
        common.emit(CLIENT, scenario, "pass", detail, **extra)
    except Skip as e:
        common.emit(CLIENT, scenario, "skip", str(e), **extra)
    except asyncio.TimeoutError:
        common.emit(CLIENT, scenario, "fail", "scenario timed out", **extra)
    except Exception as e:  # a failed expectation or a client error
        common.emit(CLIENT, scenario, "fail", f"{type(e).__name__}: {e}", **extra)


async def main():
    args = common.parse_args()
    peers = [x for x in args.peers.split(",") if x]
    cross_timeout = SPEC["cross_client"]["timeout_s"]
    if args.mode == "cross-publish":
        await run("cross_publish", lambda: cross_publish(peers), cross_timeout)
        return
    if args.mode == "cross-consume":
        for pub in peers:
            await run("cross", lambda: cross_consume(pub), cross_timeout, publisher=pub)
        return
    only = set(x for x in args.only.split(",") if x)
    for sc in SPEC["scenarios"]:
        if only and sc["id"] not in only:
            continue
        fn = globals()["s_" + sc["id"]]
        await run(sc["id"], lambda: fn(sc["params"]), sc["timeout_s"])


if __name__ == "__main__":
    asyncio.run(main())
