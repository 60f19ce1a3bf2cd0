// Runs scenarios.json through rascal (config-driven topology, publications and subscriptions on
// top of amqplib). Every name it declares starts with "rascal.". Only rascal's own API is used:
// no raw amqplib channel. Scenarios rascal cannot express are skipped with the reason.
'use strict';

const rascal = require('rascal');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');

const CLIENT = 'rascal';
const N = CLIENT + '.';
const SPEC = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'scenarios.json'), 'utf8'));
const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';

class Fail extends Error {}
class Skip extends Error {}

function emit(scenario, status, detail, extra) {
  console.log(JSON.stringify(Object.assign({ client: CLIENT, scenario, status, detail }, extra || {})));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(predicate, ms) {
  const deadline = Date.now() + (ms || 10000);
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

// One broker per scenario: its vhost config is the scenario's topology.
async function makeBroker(vhost, url) {
  const config = rascal.withDefaultConfig({
    vhosts: { '/': Object.assign({ connection: { url: url || URL } }, vhost) },
  });
  const broker = await rascal.BrokerAsPromised.create(config);
  broker.errors = [];
  broker.on('error', (e) => broker.errors.push(e));
  return broker;
}

// Deletes the broker's topology and shuts it down; bounded, so a failure is not hidden by a
// shutdown waiting for unacknowledged messages.
async function done(broker) {
  await Promise.race([broker.nuke(), sleep(3000)]);
}

const q = (name, args, durable) => ({ purge: true, options: { durable: !!durable, arguments: args || {} } });
const pubToQueue = (queue, options) => ({ queue, confirm: true, options: options || {} });

// Publishes and waits for rascal's 'success' (the broker's confirm).
async function publish(broker, name, content, overrides) {
  const session = await broker.publish(name, content, overrides || {});
  return new Promise((resolve, reject) => {
    session.on('success', resolve);
    session.on('error', reject);
  });
}

// Subscribes, collecting {message, ackOrNack}; raw bodies (no content negotiation).
async function collect(broker, subName, overrides) {
  const got = [];
  const sub = await broker.subscribe(subName, Object.assign({ contentType: 'application/octet-stream' }, overrides || {}));
  const add = (message, ackOrNack) => {
    const item = { message, done: false };
    item.ackOrNack = (...a) => { if (!item.done) { item.done = true; ackOrNack(...a); } };
    got.push(item);
  };
  sub.on('message', (message, content, ackOrNack) => add(message, ackOrNack));
  sub.on('invalid_content', (err, message, ackOrNack) => add(message, ackOrNack));
  sub.on('error', (e) => { sub.lastError = e; });
  sub.got = got;
  // rascal's cancel waits for every unacknowledged message: ack what is left first.
  sub.finish = async () => {
    got.forEach((g) => g.ackOrNack());
    await sub.cancel();
  };
  return sub;
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

const same = (a, b) => util.isDeepStrictEqual(a, b);

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
  // rascal decorates each received message with a local "rascal" header (originalQueue,
  // redeliveries...): not on the wire, so left out of the comparison.
  const headers = normalize(p.headers || {});
  delete headers.rascal;
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

const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

function withQuery(url, params) {
  const s = Object.entries(params).map(([k, v]) => `${k}=${v}`).join('&');
  return url + (url.includes('?') ? '&' : '?') + s;
}

// One queue, a publication "p" to it and a subscription "s" from it.
function oneQueue(name, args, subOpts) {
  return {
    queues: { [name]: q(name, args) },
    publications: { p: pubToQueue(name) },
    subscriptions: { s: Object.assign({ queue: name, prefetch: 10 }, subOpts || {}) },
  };
}

// --- scenarios ---------------------------------------------------------------------------

const scenarios = {
  async connect() {
    const broker = await makeBroker({});
    await broker.connect('/');
    await broker.shutdown();
    return 'broker created (connection and channel pool open)';
  },

  async declare_topology(p) {
    const qn = N + 'topology';
    const ex = { direct: N + 'direct', fanout: N + 'fanout', topic: N + 'topic', headers: N + 'headers' };
    const exchanges = {};
    for (const [t, name] of Object.entries(ex)) exchanges[name] = { type: t, options: { durable: false } };
    const hdrs = Object.fromEntries(Object.entries(p.headers_binding).filter(([k]) => !k.startsWith('x-')));
    const vhost = {
      exchanges,
      queues: { [qn]: q(qn, p.queue_arguments) },
      bindings: {
        b1: { source: ex.direct, destination: qn, destinationType: 'queue', bindingKey: p.direct_key },
        b2: { source: ex.fanout, destination: qn, destinationType: 'queue', bindingKey: '' },
        b3: { source: ex.topic, destination: qn, destinationType: 'queue', bindingKey: p.topic_pattern },
        b4: { source: ex.headers, destination: qn, destinationType: 'queue', bindingKey: '', options: p.headers_binding },
      },
      publications: {
        direct: { exchange: ex.direct, routingKey: p.direct_key, confirm: true },
        fanout: { exchange: ex.fanout, routingKey: 'ignored', confirm: true },
        topic: { exchange: ex.topic, routingKey: p.topic_key, confirm: true },
        headers: { exchange: ex.headers, routingKey: '', confirm: true, options: { headers: hdrs } },
        q: pubToQueue(qn),
      },
      subscriptions: { s: { queue: qn, prefetch: 100 } },
    };
    const broker = await makeBroker(vhost);
    try {
      for (const t of ['direct', 'fanout', 'topic', 'headers']) await publish(broker, t, Buffer.from(t));
      let sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 4, 5000);
      await sleep(200);
      await sub.finish();
      sub.got.forEach((g) => g.ackOrNack());
      const bodies = sub.got.map((g) => g.message.content.toString());
      if (!same(bodies, ['direct', 'fanout', 'topic', 'headers'])) throw new Fail(`routed bodies ${JSON.stringify(bodies)}`);
      for (let i = 0; i < p.overfill; i++) await publish(broker, 'q', Buffer.from(`m${i}`));
      // rascal has no passive declare: count what a subscription receives instead.
      sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= p.overfill, 1500);
      await sub.finish();
      sub.got.forEach((g) => g.ackOrNack());
      const kept = sub.got.map((g) => g.message.content.toString());
      const first = `m${p.overfill - p.max_length}`;
      if (kept.length !== p.max_length || kept[0] !== first) {
        throw new Fail(`after overfill consumed ${JSON.stringify(kept)}, want ${p.max_length} from ${first}`);
      }
      // A second broker whose config redeclares the queue with another x-max-length.
      const args = Object.assign({}, p.queue_arguments, { 'x-max-length': p.conflicting_max_length });
      let code;
      try {
        const b2 = await makeBroker({ queues: { [qn]: q(qn, args) } });
        await b2.shutdown();
      } catch (e) {
        code = e.code;
        if (code !== p.reply_code) throw new Fail(`inequivalent redeclare: ${e.message}`);
      }
      if (code === undefined) throw new Fail('inequivalent redeclare succeeded');
      return `4 exchange types routed; max-length kept ${kept.length} (counted by consuming); redeclare: ${code}`;
    } finally {
      await done(broker);
    }
  },

  async publish_properties() {
    const qn = N + 'props';
    const broker = await makeBroker(oneQueue(qn));
    try {
      await publish(broker, 'p', canonicalBody(), { options: canonicalOptions() });
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 5000);
      await sub.finish();
      if (!sub.got.length) throw new Fail('message not delivered');
      sub.got[0].ackOrNack();
      const diffs = compareCanonical(sub.got[0].message);
      if (diffs.length) throw new Fail(diffs.join('; '));
      return 'body, 12 properties and headers unchanged (read by a subscription: rascal has no basic.get)';
    } finally {
      await done(broker);
    }
  },

  async consume_ack_prefetch(p) {
    const qn = N + 'prefetch';
    const broker = await makeBroker(oneQueue(qn, {}, { prefetch: p.prefetch }));
    try {
      for (let i = 0; i < p.messages; i++) await publish(broker, 'p', Buffer.from(String(i)));
      const sub = await collect(broker, 's');
      const got = sub.got;
      await waitFor(() => got.length >= p.prefetch);
      await sleep(p.hold_ms);
      const beforeAck = got.length;
      if (beforeAck !== p.prefetch) throw new Fail(`${beforeAck} delivered before any ack, want ${p.prefetch}`);
      let acked = 0;
      while (acked < p.messages) {
        if (acked >= got.length && !(await waitFor(() => got.length > acked, 5000))) {
          throw new Fail(`stalled after ${acked} acks, ${got.length} received`);
        }
        got[acked].ackOrNack();
        acked++;
      }
      await sleep(300);
      await sub.finish();
      const bodies = got.map((g) => Number(g.message.content.toString()));
      if (!same(bodies, [...Array(p.messages).keys()])) throw new Fail(`order/contents ${bodies}`);
      if (got.some((g) => g.message.fields.redelivered)) throw new Fail('a message was redelivered');
      return `${beforeAck} in flight before acks; ${bodies.length} in order`;
    } finally {
      await done(broker);
    }
  },

  async get() {
    throw new Skip('rascal has no basic.get: messages are only read through subscriptions');
  },

  async nack_requeue() {
    const qn = N + 'nack';
    const broker = await makeBroker(oneQueue(qn));
    try {
      await publish(broker, 'p', Buffer.from('nack-me'));
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 5000);
      if (!sub.got.length) throw new Fail('no message');
      sub.got[0].ackOrNack(new Error('requeue please'), { strategy: 'nack', requeue: true });
      await waitFor(() => sub.got.length >= 2, 5000);
      await sub.finish();
      if (sub.got.length < 2) throw new Fail('message not requeued');
      sub.got[1].ackOrNack();
      const [m1, m2] = sub.got.map((g) => g.message);
      if (m1.fields.redelivered || !m2.fields.redelivered || !m1.content.equals(m2.content)) {
        throw new Fail(`redelivered ${m1.fields.redelivered}->${m2.fields.redelivered}`);
      }
      return 'requeued with redelivered=true';
    } finally {
      await done(broker);
    }
  },

  async reject_dlx(p) {
    const qn = N + 'work';
    const dlx = N + 'dlx';
    const dlq = N + 'dlq';
    const broker = await makeBroker({
      exchanges: { [dlx]: { type: 'fanout', options: { durable: false } } },
      queues: { [qn]: q(qn, { 'x-dead-letter-exchange': dlx }), [dlq]: q(dlq) },
      bindings: { b: { source: dlx, destination: dlq, destinationType: 'queue', bindingKey: '' } },
      publications: { p: pubToQueue(qn) },
      subscriptions: { s: { queue: qn }, d: { queue: dlq } },
    });
    try {
      await publish(broker, 'p', Buffer.from('reject-me'));
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 5000);
      if (!sub.got.length) throw new Fail('no message');
      // rascal's default recovery for an error is nack without requeue (it has no basic.reject).
      sub.got[0].ackOrNack(new Error('reject'));
      const d = await collect(broker, 'd');
      await waitFor(() => d.got.length >= 1, 5000);
      await sub.finish();
      await d.finish();
      if (!d.got.length) throw new Fail('nothing in the dead-letter queue');
      d.got[0].ackOrNack();
      const m = d.got[0].message;
      if (m.content.toString() !== 'reject-me') throw new Fail(`dead-lettered body ${m.content}`);
      const death = xDeathCheck(m.properties.headers, p.reason, qn, { count: 1, exchange: '', 'routing-keys': [qn] });
      return `x-death reason ${death.reason}, count ${death.count} (basic.nack requeue=false: rascal has no reject)`;
    } finally {
      await done(broker);
    }
  },

  async delivery_limit_dlq(p) {
    const qn = N + 'limited';
    const dlx = N + 'dlx2';
    const dlq = N + 'dlq2';
    const broker = await makeBroker({
      exchanges: { [dlx]: { type: 'fanout', options: { durable: false } } },
      queues: {
        [qn]: q(qn, { 'x-queue-type': 'quorum', 'x-delivery-limit': p.delivery_limit, 'x-dead-letter-exchange': dlx }, true),
        [dlq]: q(dlq),
      },
      bindings: { b: { source: dlx, destination: dlq, destinationType: 'queue', bindingKey: '' } },
      publications: { p: pubToQueue(qn) },
      subscriptions: { s: { queue: qn, prefetch: 1 }, d: { queue: dlq } },
    });
    try {
      await publish(broker, 'p', Buffer.from('limit-me'));
      let deliveries = 0;
      const sub = await broker.subscribe('s', { contentType: 'application/octet-stream' });
      sub.on('error', () => {});
      const onMsg = (message, content, ackOrNack) => {
        deliveries++;
        if (deliveries > p.deliveries + 2) return ackOrNack();
        ackOrNack(new Error('again'), { strategy: 'nack', requeue: true });
      };
      sub.on('message', onMsg);
      sub.on('invalid_content', (err, m, a) => onMsg(m, null, a));
      const d = await collect(broker, 'd');
      await waitFor(() => d.got.length >= 1, 8000);
      await sleep(300);
      await sub.cancel();
      await d.finish();
      if (deliveries !== p.deliveries) throw new Fail(`delivered ${deliveries} times, want ${p.deliveries}`);
      if (!d.got.length) throw new Fail('nothing in the dead-letter queue');
      d.got[0].ackOrNack();
      const death = xDeathCheck(d.got[0].message.properties.headers, p.reason, qn);
      return `${deliveries} deliveries, then x-death reason ${death.reason}`;
    } finally {
      await done(broker);
    }
  },

  async publisher_confirms(p) {
    const qn = N + 'confirms';
    const broker = await makeBroker(oneQueue(qn, {}, { prefetch: 200 }));
    try {
      let acks = 0;
      const errs = [];
      const done = [];
      for (let i = 0; i < p.messages; i++) {
        done.push(publish(broker, 'p', Buffer.from(String(i))).then(() => { acks++; }, (e) => errs.push(e.message)));
      }
      await Promise.all(done);
      if (acks !== p.messages) throw new Fail(`${acks} confirmed, errors: ${errs.slice(0, 3)}`);
      // rascal has no passive declare: count the queue by consuming it.
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= p.messages, 5000);
      await sleep(200);
      await sub.finish();
      sub.got.forEach((g) => g.ackOrNack());
      if (sub.got.length !== p.messages) throw new Fail(`${sub.got.length} messages in queue`);
      return `${acks} confirmed ('success'), ${sub.got.length} in the queue`;
    } finally {
      await done(broker);
    }
  },

  async mandatory_return(p) {
    const key = N + 'nowhere';
    const broker = await makeBroker({
      publications: { p: { exchange: '', routingKey: key, confirm: true, options: { mandatory: true } } },
    });
    try {
      const session = await broker.publish('p', Buffer.from('bounce'));
      const returned = [];
      session.on('return', (m) => returned.push(m));
      session.on('error', () => {});
      await waitFor(() => returned.length > 0, 5000);
      if (!returned.length) throw new Fail('no basic.return');
      const f = returned[0].fields;
      const body = returned[0].content.toString();
      if (f.replyCode !== p.reply_code || f.replyText !== p.reply_text || f.routingKey !== key || body !== 'bounce') {
        throw new Fail(`return ${f.replyCode} ${f.replyText} ${f.routingKey} ${body}`);
      }
      return `'return' event: ${f.replyCode} ${f.replyText}`;
    } finally {
      await broker.shutdown();
    }
  },

  async server_cancel() {
    const qn = N + 'cancelme';
    const broker = await makeBroker(oneQueue(qn, {}, { retry: false }));
    try {
      const sub = await broker.subscribe('s');
      let cancelled = null;
      const errors = [];
      sub.on('cancelled', (e) => { cancelled = e; });
      sub.on('error', (e) => errors.push(e.message));
      sub.on('message', () => {});
      // A second rascal broker with the same queue deletes it (nuke) from its own connection.
      const other = await makeBroker({ queues: { [qn]: q(qn) } });
      await other.nuke();
      await waitFor(() => cancelled, 5000);
      if (!cancelled) throw new Fail(`no 'cancelled' event; errors: ${errors}`);
      if (errors.length) throw new Fail(`channel errors: ${errors}`);
      return `'cancelled' event: ${cancelled.message}`;
    } finally {
      await broker.shutdown();
    }
  },

  async empty_body(p) {
    const qn = N + 'empty';
    const broker = await makeBroker(oneQueue(qn));
    try {
      await publish(broker, 'p', Buffer.alloc(0), { options: { contentType: p.content_type } });
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 5000);
      await sub.finish();
      if (!sub.got.length) throw new Fail('no message');
      sub.got[0].ackOrNack();
      const m = sub.got[0].message;
      if (m.content.length !== 0 || m.properties.contentType !== p.content_type) {
        throw new Fail(`body ${m.content.length} bytes, content type ${m.properties.contentType}`);
      }
      return '0-byte body';
    } finally {
      await done(broker);
    }
  },

  async large_body(p) {
    const qn = N + 'large';
    const broker = await makeBroker(oneQueue(qn));
    try {
      const data = Buffer.alloc(p.size);
      for (let i = 0; i < p.size; i++) data[i] = i % p.modulus;
      await publish(broker, 'p', data);
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 10000);
      await sub.finish();
      if (!sub.got.length) throw new Fail('no message');
      sub.got[0].ackOrNack();
      const m = sub.got[0].message;
      if (m.content.length !== data.length || sha256(m.content) !== sha256(data)) {
        throw new Fail(`length ${m.content.length}, sha256 differs`);
      }
      return `${m.content.length} bytes unchanged`;
    } finally {
      await done(broker);
    }
  },

  async heartbeat_idle(p) {
    const qn = N + 'heartbeat';
    const broker = await makeBroker(oneQueue(qn), withQuery(URL, { heartbeat: p.heartbeat_s }));
    try {
      const conn = await broker.connect('/');
      const negotiated = conn.connection ? conn.connection.heartbeat : undefined;
      if (negotiated !== p.heartbeat_s) throw new Fail(`negotiated heartbeat ${negotiated}`);
      let disconnected = null;
      broker.on('disconnect', (e) => { disconnected = e || 'disconnect'; });
      conn.on('close', (e) => { disconnected = e || 'closed'; });
      await sleep(p.idle_s * 1000);
      if (disconnected || broker.errors.length) throw new Fail(`connection lost while idle: ${disconnected || broker.errors[0]}`);
      await publish(broker, 'p', Buffer.from('alive'));
      const sub = await collect(broker, 's');
      await waitFor(() => sub.got.length >= 1, 5000);
      await sub.finish();
      await conn.close();
      if (!sub.got.length || sub.got[0].message.content.toString() !== 'alive') throw new Fail('round trip after idle failed');
      return `heartbeat ${negotiated}s; usable after ${p.idle_s}s idle`;
    } finally {
      await done(broker);
    }
  },

  async clean_close() {
    const broker = await makeBroker({});
    // broker.connect opens a connection the caller owns; shutdown closes the broker's own.
    const conn = await broker.connect('/');
    let closed = false;
    conn.on('close', (e) => { closed = e ? `with error ${e.message}` : true; });
    await conn.close();
    await broker.shutdown();
    await waitFor(() => closed, 2000);
    if (closed !== true) throw new Fail(`connection close: ${closed}`);
    if (broker.errors.length) throw new Fail(`errors: ${broker.errors.map((e) => e.message)}`);
    return 'broker.shutdown completed; connection closed cleanly';
  },
};

// --- cross-client ------------------------------------------------------------------------

// Cross-client queues must not be purged when rascal asserts them.
const keepQ = () => ({ options: { durable: false } });

const crossQueue = (publisher, consumer) =>
  SPEC.cross_client.queue.replace('{publisher}', publisher).replace('{consumer}', consumer);

async function crossPublish(consumers) {
  const queues = {};
  const publications = {};
  for (const c of consumers) {
    const qn = crossQueue(CLIENT, c);
    queues[qn] = keepQ();
    publications[c] = pubToQueue(qn);
  }
  const broker = await makeBroker({ queues, publications });
  try {
    for (const c of consumers) await publish(broker, c, canonicalBody(), { options: canonicalOptions() });
  } finally {
    await broker.shutdown();
  }
  return `published to ${consumers.length} queues`;
}

async function crossConsume(publisher) {
  const qn = crossQueue(publisher, CLIENT);
  const broker = await makeBroker({ queues: { [qn]: keepQ() }, subscriptions: { s: { queue: qn } } });
  try {
    const sub = await collect(broker, 's');
    await waitFor(() => sub.got.length >= 1, 5000);
    await sub.finish();
    if (!sub.got.length) throw new Fail(`nothing in ${qn}`);
    sub.got[0].ackOrNack();
    const diffs = compareCanonical(sub.got[0].message);
    if (diffs.length) throw new Fail(diffs.join('; '));
    return 'unchanged';
  } finally {
    await done(broker);
  }
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
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(2); });
