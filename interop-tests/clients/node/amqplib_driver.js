// Runs scenarios.json with amqplib's promise API. Every name it declares starts with
// "amqplib.". Each scenario is bounded by a timer; one JSON line per scenario on stdout.
'use strict';

const amqp = require('amqplib');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');

const CLIENT = 'amqplib';
const N = CLIENT + '.';
const SPEC = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'scenarios.json'), 'utf8'));
const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';

class Fail extends Error {}
class Skip extends Error {}

function emit(scenario, status, detail, extra) {
  console.log(JSON.stringify(Object.assign({ client: CLIENT, scenario, status, detail }, extra || {})));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect(url) {
  const conn = await amqp.connect(url || URL, { timeout: 10000 });
  conn.on('error', () => {}); // reported through the failing call instead
  return conn;
}

async function channel(conn, confirm) {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
  ch.on('error', () => {}); // a channel closed by the broker rejects the pending call
  return ch;
}

function withQuery(url, params) {
  const q = Object.entries(params).map(([k, v]) => `${k}=${v}`).join('&');
  return url + (url.includes('?') ? '&' : '?') + q;
}

async function waitFor(predicate, ms) {
  const deadline = Date.now() + (ms || 10000);
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

// basic.get until a message arrives (dead-lettering is asynchronous in RabbitMQ).
async function getEventually(ch, queue, ms) {
  const deadline = Date.now() + (ms || 5000);
  for (;;) {
    const m = await ch.get(queue, { noAck: false });
    if (m) return m;
    if (Date.now() > deadline) return null;
    await sleep(50);
  }
}

const canon = SPEC.canonical_message;

function canonicalOptions() {
  const p = canon.properties;
  return {
    contentType: p.content_type, contentEncoding: p.content_encoding, headers: canon.headers,
    deliveryMode: p.delivery_mode, priority: p.priority, correlationId: p.correlation_id,
    replyTo: p.reply_to, expiration: p.expiration, messageId: p.message_id,
    timestamp: p.timestamp, type: p.type, userId: p.user_id, appId: p.app_id,
  };
}

const canonicalBody = () => Buffer.from(canon.body, 'utf8');

function normalize(v) {
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = normalize(x);
    return out;
  }
  return v;
}

function same(a, b) {
  return util.isDeepStrictEqual(a, b);
}

function compareCanonical(m) {
  const diffs = [];
  if (!m.content.equals(canonicalBody())) diffs.push(`body ${JSON.stringify(m.content.toString())}`);
  const p = m.properties;
  const got = {
    content_type: p.contentType, content_encoding: p.contentEncoding,
    delivery_mode: p.deliveryMode, priority: p.priority, correlation_id: p.correlationId,
    reply_to: p.replyTo, expiration: p.expiration, message_id: p.messageId,
    timestamp: p.timestamp, type: p.type, user_id: p.userId, app_id: p.appId,
  };
  for (const [k, want] of Object.entries(canon.properties)) {
    if (!same(want, got[k])) diffs.push(`${k}: got ${JSON.stringify(got[k])}, want ${JSON.stringify(want)}`);
  }
  const headers = normalize(p.headers || {});
  for (const k of new Set([...Object.keys(canon.headers), ...Object.keys(headers)])) {
    if (!same(canon.headers[k], headers[k])) {
      diffs.push(`header ${k}: got ${JSON.stringify(headers[k])}, want ${JSON.stringify(canon.headers[k])}`);
    }
  }
  return diffs;
}

function xDeathCheck(headers, reason, queue, more) {
  const deaths = normalize((headers || {})['x-death']);
  if (!Array.isArray(deaths) || deaths.length === 0) {
    throw new Fail(`no x-death header; headers: ${JSON.stringify(normalize(headers || {}))}`);
  }
  const first = deaths[0];
  const want = Object.assign({ reason, queue }, more || {});
  const problems = [];
  for (const [k, v] of Object.entries(want)) {
    if (!same(v, first[k])) problems.push(`${k} ${JSON.stringify(first[k])}, want ${JSON.stringify(v)}`);
  }
  if (problems.length) throw new Fail(`x-death[0]: ${problems.join('; ')} (x-death: ${JSON.stringify(deaths)})`);
  return first;
}

function largeBody(p) {
  const b = Buffer.alloc(p.size);
  for (let i = 0; i < p.size; i++) b[i] = i % p.modulus;
  return b;
}

const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

async function dlxPair(ch, suffix) {
  const dlx = N + 'dlx' + suffix;
  const dlq = N + 'dlq' + suffix;
  await ch.assertExchange(dlx, 'fanout', { durable: false });
  await ch.assertQueue(dlq, { durable: false });
  await ch.bindQueue(dlq, dlx, '');
  return [dlx, dlq];
}

// --- scenarios ---------------------------------------------------------------------------

const scenarios = {
  async connect() {
    const conn = await connect();
    await channel(conn);
    await conn.close();
    return 'connection and channel open';
  },

  async declare_topology(p) {
    const conn = await connect();
    let ch = await channel(conn, true);
    const q = N + 'topology';
    const ex = {};
    for (const t of ['direct', 'fanout', 'topic', 'headers']) {
      ex[t] = N + t;
      await ch.assertExchange(ex[t], t, { durable: false });
    }
    await ch.assertQueue(q, { durable: false, arguments: p.queue_arguments });
    await ch.bindQueue(q, ex.direct, p.direct_key);
    await ch.bindQueue(q, ex.fanout, '');
    await ch.bindQueue(q, ex.topic, p.topic_pattern);
    await ch.bindQueue(q, ex.headers, '', p.headers_binding);
    const hdrs = Object.fromEntries(Object.entries(p.headers_binding).filter(([k]) => !k.startsWith('x-')));
    ch.publish(ex.direct, p.direct_key, Buffer.from('direct'));
    ch.publish(ex.fanout, 'ignored', Buffer.from('fanout'));
    ch.publish(ex.topic, p.topic_key, Buffer.from('topic'));
    ch.publish(ex.headers, '', Buffer.from('headers'), { headers: hdrs });
    await ch.waitForConfirms();
    const got = [];
    for (let i = 0; i < 4; i++) {
      const m = await ch.get(q, { noAck: true });
      got.push(m ? m.content.toString() : null);
    }
    if (!same(got, ['direct', 'fanout', 'topic', 'headers'])) throw new Fail(`routed bodies ${JSON.stringify(got)}`);
    for (let i = 0; i < p.overfill; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
    await ch.waitForConfirms();
    const count = (await ch.checkQueue(q)).messageCount;
    if (count !== p.max_length) throw new Fail(`message_count ${count} after overfill, want ${p.max_length}`);
    const head = await ch.get(q, { noAck: true });
    const first = `m${p.overfill - p.max_length}`;
    if (!head || head.content.toString() !== first) throw new Fail(`head after overfill ${head && head.content}, want ${first}`);
    const args = Object.assign({}, p.queue_arguments, { 'x-max-length': p.conflicting_max_length });
    let closed;
    try {
      await ch.assertQueue(q, { durable: false, arguments: args });
      throw new Fail('inequivalent redeclare succeeded');
    } catch (e) {
      if (e instanceof Fail) throw e;
      if (e.code !== p.reply_code) throw new Fail(`inequivalent redeclare: ${e.message}`);
      closed = `${e.code}`;
    }
    ch = await channel(conn);
    await ch.deleteQueue(q);
    for (const name of Object.values(ex)) await ch.deleteExchange(name);
    await conn.close();
    return `4 exchange types routed; max-length kept ${count}; redeclare: ${closed}`;
  },

  async publish_properties() {
    const conn = await connect();
    const ch = await channel(conn);
    const q = N + 'props';
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, canonicalBody(), canonicalOptions());
    const m = await getEventually(ch, q);
    if (!m) throw new Fail('message not in queue');
    ch.ack(m);
    await ch.deleteQueue(q);
    await conn.close();
    const diffs = compareCanonical(m);
    if (diffs.length) throw new Fail(diffs.join('; '));
    return 'body, 12 properties and headers unchanged';
  },

  async consume_ack_prefetch(p) {
    const conn = await connect();
    const ch = await channel(conn, true);
    const q = N + 'prefetch';
    await ch.assertQueue(q, { durable: false });
    for (let i = 0; i < p.messages; i++) ch.sendToQueue(q, Buffer.from(String(i)));
    await ch.waitForConfirms();
    await ch.prefetch(p.prefetch);
    const received = [];
    await ch.consume(q, (m) => { if (m) received.push(m); }, { noAck: false });
    await waitFor(() => received.length >= p.prefetch);
    await sleep(p.hold_ms);
    const beforeAck = received.length;
    if (beforeAck !== p.prefetch) throw new Fail(`${beforeAck} delivered before any ack, want ${p.prefetch}`);
    let acked = 0;
    while (acked < p.messages) {
      if (acked >= received.length && !(await waitFor(() => received.length > acked, 5000))) {
        throw new Fail(`stalled after ${acked} acks, ${received.length} received`);
      }
      ch.ack(received[acked]);
      acked++;
    }
    await sleep(200);
    const bodies = received.map((m) => Number(m.content.toString()));
    if (!same(bodies, [...Array(p.messages).keys()])) throw new Fail(`order/contents ${bodies}`);
    if (received.some((m) => m.fields.redelivered)) throw new Fail('a message was redelivered');
    const ch2 = await channel(conn);
    const left = (await ch2.checkQueue(q)).messageCount;
    await ch2.deleteQueue(q);
    await conn.close();
    if (left !== 0) throw new Fail(`${left} messages left`);
    return `${beforeAck} in flight before acks; ${bodies.length} in order`;
  },

  async get() {
    const conn = await connect();
    const ch = await channel(conn, true);
    const q = N + 'get';
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, Buffer.from('get-me'));
    await ch.waitForConfirms();
    const m = await ch.get(q, { noAck: false });
    if (!m || m.content.toString() !== 'get-me') throw new Fail(`first get: ${m}`);
    if (m.fields.messageCount !== 0 || m.fields.redelivered) {
      throw new Fail(`message_count ${m.fields.messageCount}, redelivered ${m.fields.redelivered}`);
    }
    ch.ack(m);
    const m2 = await ch.get(q, { noAck: false });
    await ch.deleteQueue(q);
    await conn.close();
    if (m2 !== false) throw new Fail('second get was not get-empty');
    return 'get-ok (message_count 0) then get-empty';
  },

  async nack_requeue() {
    const conn = await connect();
    const ch = await channel(conn, true);
    const q = N + 'nack';
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, Buffer.from('nack-me'));
    await ch.waitForConfirms();
    const m1 = await ch.get(q, { noAck: false });
    if (!m1) throw new Fail('no message');
    ch.nack(m1, false, true);
    const m2 = await getEventually(ch, q);
    if (!m2) throw new Fail('message not requeued');
    ch.ack(m2);
    await ch.deleteQueue(q);
    await conn.close();
    if (m1.fields.redelivered || !m2.fields.redelivered || !m1.content.equals(m2.content)) {
      throw new Fail(`redelivered ${m1.fields.redelivered}->${m2.fields.redelivered}`);
    }
    return 'requeued with redelivered=true';
  },

  async reject_dlx(p) {
    const conn = await connect();
    const ch = await channel(conn, true);
    const [dlx, dlq] = await dlxPair(ch, '');
    const q = N + 'work';
    await ch.assertQueue(q, { durable: false, arguments: { 'x-dead-letter-exchange': dlx } });
    ch.sendToQueue(q, Buffer.from('reject-me'));
    await ch.waitForConfirms();
    const m = await ch.get(q, { noAck: false });
    if (!m) throw new Fail('no message');
    ch.reject(m, false);
    const d = await getEventually(ch, dlq);
    if (d) ch.ack(d);
    await ch.deleteQueue(q);
    await ch.deleteQueue(dlq);
    await ch.deleteExchange(dlx);
    await conn.close();
    if (!d) throw new Fail('nothing in the dead-letter queue');
    if (d.content.toString() !== 'reject-me') throw new Fail(`dead-lettered body ${d.content}`);
    const death = xDeathCheck(d.properties.headers, p.reason, q, { count: 1, exchange: '', 'routing-keys': [q] });
    return `x-death reason ${death.reason}, count ${death.count}`;
  },

  async delivery_limit_dlq(p) {
    const conn = await connect();
    const ch = await channel(conn, true);
    const [dlx, dlq] = await dlxPair(ch, '2');
    const q = N + 'limited';
    await ch.assertQueue(q, {
      durable: true,
      arguments: { 'x-queue-type': 'quorum', 'x-delivery-limit': p.delivery_limit, 'x-dead-letter-exchange': dlx },
    });
    ch.sendToQueue(q, Buffer.from('limit-me'));
    await ch.waitForConfirms();
    let deliveries = 0;
    for (;;) {
      const m = await getEventually(ch, q, 1000);
      if (!m) break;
      deliveries++;
      if (deliveries > p.deliveries + 2) break;
      ch.nack(m, false, true);
    }
    const d = await getEventually(ch, dlq);
    if (d) ch.ack(d);
    await ch.deleteQueue(q);
    await ch.deleteQueue(dlq);
    await ch.deleteExchange(dlx);
    await conn.close();
    if (deliveries !== p.deliveries) throw new Fail(`delivered ${deliveries} times, want ${p.deliveries}`);
    if (!d) throw new Fail('nothing in the dead-letter queue');
    const death = xDeathCheck(d.properties.headers, p.reason, q);
    return `${deliveries} deliveries, then x-death reason ${death.reason}`;
  },

  async publisher_confirms(p) {
    const conn = await connect();
    const ch = await channel(conn, true);
    const q = N + 'confirms';
    await ch.assertQueue(q, { durable: false });
    let acks = 0;
    let nacks = 0;
    const done = [];
    for (let i = 0; i < p.messages; i++) {
      done.push(new Promise((resolve) => {
        ch.sendToQueue(q, Buffer.from(String(i)), {}, (err) => { if (err) nacks++; else acks++; resolve(); });
      }));
    }
    await Promise.all(done);
    const count = (await ch.checkQueue(q)).messageCount;
    await ch.deleteQueue(q);
    await conn.close();
    if (acks !== p.messages) throw new Fail(`${acks} acks, ${nacks} nacks`);
    if (count !== p.messages) throw new Fail(`${count} messages in queue`);
    return `${acks} acked`;
  },

  async mandatory_return(p) {
    const conn = await connect();
    const ch = await channel(conn);
    const returned = [];
    ch.on('return', (m) => returned.push(m));
    const key = N + 'nowhere';
    ch.publish('', key, Buffer.from('bounce'), { mandatory: true });
    await waitFor(() => returned.length > 0, 5000);
    await conn.close();
    if (!returned.length) throw new Fail('no basic.return');
    const f = returned[0].fields;
    const body = returned[0].content.toString();
    if (f.replyCode !== p.reply_code || f.replyText !== p.reply_text || f.routingKey !== key || body !== 'bounce') {
      throw new Fail(`return ${f.replyCode} ${f.replyText} ${f.routingKey} ${body}`);
    }
    return `basic.return ${f.replyCode} ${f.replyText}`;
  },

  async server_cancel() {
    const conn = await connect();
    const ch = await channel(conn);
    const q = N + 'cancelme';
    await ch.assertQueue(q, { durable: false });
    let cancelled = false;
    let chClosed = false;
    ch.on('close', () => { chClosed = true; });
    // amqplib calls the consumer with null when the server cancels it.
    await ch.consume(q, (m) => { if (m === null) cancelled = true; }, { noAck: false });
    const other = await channel(conn);
    await other.deleteQueue(q);
    await waitFor(() => cancelled, 5000);
    await sleep(100);
    const closedBefore = chClosed;
    await conn.close();
    if (!cancelled) throw new Fail('no basic.cancel from the server');
    if (closedBefore) throw new Fail('consuming channel closed');
    return 'basic.cancel received; channel open';
  },

  async empty_body(p) {
    const conn = await connect();
    const ch = await channel(conn);
    const q = N + 'empty';
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, Buffer.alloc(0), { contentType: p.content_type });
    const m = await getEventually(ch, q);
    await ch.deleteQueue(q);
    await conn.close();
    if (!m) throw new Fail('no message');
    if (m.content.length !== 0 || m.properties.contentType !== p.content_type) {
      throw new Fail(`body ${m.content.length} bytes, content type ${m.properties.contentType}`);
    }
    return '0-byte body';
  },

  async large_body(p) {
    const conn = await connect();
    const ch = await channel(conn);
    const q = N + 'large';
    await ch.assertQueue(q, { durable: false });
    const data = largeBody(p);
    ch.sendToQueue(q, data);
    const m = await getEventually(ch, q, 10000);
    await ch.deleteQueue(q);
    await conn.close();
    if (!m) throw new Fail('no message');
    if (m.content.length !== data.length || sha256(m.content) !== sha256(data)) {
      throw new Fail(`length ${m.content.length}, sha256 differs`);
    }
    return `${m.content.length} bytes unchanged`;
  },

  async heartbeat_idle(p) {
    const conn = await connect(withQuery(URL, { heartbeat: p.heartbeat_s }));
    const negotiated = conn.connection.heartbeat;
    if (negotiated !== p.heartbeat_s) {
      await conn.close();
      throw new Fail(`negotiated heartbeat ${negotiated}`);
    }
    let closed = null;
    conn.on('close', (e) => { closed = e || 'closed'; });
    await sleep(p.idle_s * 1000);
    if (closed) throw new Fail(`connection closed while idle: ${closed}`);
    const ch = await channel(conn);
    const q = N + 'heartbeat';
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, Buffer.from('alive'));
    const m = await getEventually(ch, q);
    await ch.deleteQueue(q);
    await conn.close();
    if (!m || m.content.toString() !== 'alive') throw new Fail('round trip after idle failed');
    return `heartbeat ${negotiated}s; usable after ${p.idle_s}s idle`;
  },

  async clean_close() {
    const conn = await connect();
    let connClosed = false;
    conn.on('close', (e) => { connClosed = e ? `with error ${e.message}` : true; });
    const ch = await channel(conn);
    await ch.close();
    await conn.close();
    await waitFor(() => connClosed, 2000);
    if (connClosed !== true) throw new Fail(`connection close: ${connClosed}`);
    return 'channel and connection closed';
  },
};

// --- cross-client ------------------------------------------------------------------------

const crossQueue = (publisher, consumer) =>
  SPEC.cross_client.queue.replace('{publisher}', publisher).replace('{consumer}', consumer);

async function crossPublish(consumers) {
  const conn = await connect();
  const ch = await channel(conn, true);
  for (const consumer of consumers) {
    const q = crossQueue(CLIENT, consumer);
    await ch.assertQueue(q, { durable: false });
    ch.sendToQueue(q, canonicalBody(), canonicalOptions());
  }
  await ch.waitForConfirms();
  await conn.close();
  return `published to ${consumers.length} queues`;
}

async function crossConsume(publisher) {
  const conn = await connect();
  const ch = await channel(conn);
  const q = crossQueue(publisher, CLIENT);
  await ch.assertQueue(q, { durable: false });
  const m = await getEventually(ch, q);
  if (!m) {
    await conn.close();
    throw new Fail(`nothing in ${q}`);
  }
  ch.ack(m);
  await ch.deleteQueue(q);
  await conn.close();
  const diffs = compareCanonical(m);
  if (diffs.length) throw new Fail(diffs.join('; '));
  return 'unchanged';
}

async function run(scenario, make, timeoutS, extra) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('scenario timed out')), timeoutS * 1000);
  });
  try {
    const detail = await Promise.race([make(), timeout]);
    emit(scenario, 'pass', detail, extra);
  } catch (e) {
    if (e instanceof Skip) emit(scenario, 'skip', e.message, extra);
    else emit(scenario, 'fail', `${e.constructor.name}: ${e.message}`, extra);
  } finally {
    clearTimeout(timer);
  }
}

function arg(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : '';
}

async function main() {
  const mode = arg('--mode') || 'scenarios';
  const peers = arg('--peers').split(',').filter(Boolean);
  const crossTimeout = SPEC.cross_client.timeout_s;
  if (mode === 'cross-publish') {
    await run('cross_publish', () => crossPublish(peers), crossTimeout);
  } else if (mode === 'cross-consume') {
    for (const pub of peers) await run('cross', () => crossConsume(pub), crossTimeout, { publisher: pub });
  } else {
    const only = new Set(arg('--only').split(',').filter(Boolean));
    for (const sc of SPEC.scenarios) {
      if (only.size && !only.has(sc.id)) continue;
      await run(sc.id, () => scenarios[sc.id](sc.params), sc.timeout_s);
    }
  }
  process.exit(0); // a timed-out scenario may have left a socket open
}

main().catch((e) => { console.error(e); process.exit(2); });
