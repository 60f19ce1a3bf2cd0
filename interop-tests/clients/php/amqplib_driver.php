<?php
// Runs scenarios.json with php-amqplib (Debian's php-amqplib, autoloaded from
// /usr/share/php/PhpAmqpLib). Every name it declares starts with "php-amqplib.". One JSON line
// per scenario on stdout. php-amqplib is synchronous: every wait has a timeout, and heartbeats
// on an idle connection come from its PCNTLHeartbeatSender (SIGALRM).

require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Connection\Heartbeat\PCNTLHeartbeatSender;
use PhpAmqpLib\Exception\AMQPBasicCancelException;
use PhpAmqpLib\Exception\AMQPProtocolChannelException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

const CLIENT = 'php-amqplib';
const N = CLIENT . '.';

class Fail extends Exception {}
class Skip extends Exception {}

$SPEC = json_decode(file_get_contents(getenv('SCENARIOS_JSON') ?: __DIR__ . '/../scenarios.json'), true);
$URL = getenv('AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/%2f';

function connect($heartbeat = 10)
{
    global $URL;
    $u = parse_url($URL);
    $vhost = isset($u['path']) && $u['path'] !== '/' ? rawurldecode(substr($u['path'], 1)) : '/';
    // read/write timeout must be at least twice the heartbeat
    return new AMQPStreamConnection($u['host'], $u['port'] ?? 5672, rawurldecode($u['user']),
        rawurldecode($u['pass']), $vhost, false, 'AMQPLAIN', null, 'en_US', 10.0,
        max(10.0, 2 * $heartbeat + 1), null, false, $heartbeat);
}

function canonical_message()
{
    global $SPEC;
    $c = $SPEC['canonical_message'];
    $props = $c['properties'];
    $props['application_headers'] = new AMQPTable($c['headers']);
    return new AMQPMessage($c['body'], $props);
}

function props_of(AMQPMessage $m)
{
    $p = $m->get_properties();
    if (isset($p['application_headers'])) {
        $p['headers'] = $p['application_headers']->getNativeData();
    }
    return $p;
}

// Strict deep equality: true is not 1, "1" is not 1; list order matters, table key order not.
function same($want, $got)
{
    if (is_array($want)) {
        if (!is_array($got) || count($want) !== count($got)) return false;
        if (array_is_list($want) !== array_is_list($got)) return false;
        foreach ($want as $k => $v) {
            if (!array_key_exists($k, $got) || !same($v, $got[$k])) return false;
        }
        return true;
    }
    return $want === $got;
}

function show($v) { return json_encode($v, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES); }

function compare_canonical($body, $props)
{
    global $SPEC;
    $c = $SPEC['canonical_message'];
    $diffs = [];
    if ($body !== $c['body']) $diffs[] = 'body ' . show($body);
    foreach ($c['properties'] as $k => $want) {
        $got = $props[$k] ?? null;
        if (!same($want, $got)) $diffs[] = "$k: got " . show($got) . ', want ' . show($want);
    }
    $gotH = $props['headers'] ?? [];
    $keys = array_unique(array_merge(array_keys($c['headers']), array_keys($gotH)));
    sort($keys);
    foreach ($keys as $k) {
        $w = $c['headers'][$k] ?? '<missing>';
        $g = $gotH[$k] ?? '<missing>';
        if (!same($w, $g)) $diffs[] = "header $k: got " . show($g) . ', want ' . show($w);
    }
    return $diffs;
}

function x_death_check($props, $reason, $queue, $more = [])
{
    $deaths = $props['headers']['x-death'] ?? null;
    if (!is_array($deaths) || !$deaths) throw new Fail('no x-death header; headers: ' . show($props['headers'] ?? null));
    $first = $deaths[0];
    $want = array_merge(['reason' => $reason, 'queue' => $queue], $more);
    $problems = [];
    foreach ($want as $k => $v) {
        if (!same($v, $first[$k] ?? null)) $problems[] = "$k " . show($first[$k] ?? null) . ', want ' . show($v);
    }
    if ($problems) throw new Fail('x-death[0]: ' . implode('; ', $problems) . ' (x-death: ' . show($deaths) . ')');
    return $first;
}

function get_eventually($ch, $q, $limit = 5.0)
{
    $deadline = microtime(true) + $limit;
    while (true) {
        $m = $ch->basic_get($q, false);
        if ($m !== null || microtime(true) > $deadline) return $m;
        usleep(50000);
    }
}

function confirms($ch)
{
    $nacked = 0;
    $ch->set_nack_handler(function ($m) use (&$nacked) { $nacked++; });
    $ch->wait_for_pending_acks(10);
    if ($nacked) throw new Fail("$nacked publishes nacked");
}

function dlx_pair($ch, $suffix)
{
    $dlx = N . 'dlx' . $suffix;
    $dlq = N . 'dlq' . $suffix;
    $ch->exchange_declare($dlx, 'fanout', false, false, false);
    $ch->queue_declare($dlq, false, false, false, false);
    $ch->queue_bind($dlq, $dlx);
    return [$dlx, $dlq];
}

function declare_q($ch, $q, $args = null, $durable = false)
{
    return $ch->queue_declare($q, false, $durable, false, false, false, $args ? new AMQPTable($args) : []);
}

function msg($body, $props = []) { return new AMQPMessage($body, $props); }

$S = [];

$S['connect'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $ok = $c->isConnected() && $ch->is_open();
    $c->close();
    if (!$ok) throw new Fail('connection or channel not open');
    return 'connection and channel open';
};

$S['declare_topology'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $ch->confirm_select();
    $q = N . 'topology';
    $kinds = ['direct', 'fanout', 'topic', 'headers'];
    foreach ($kinds as $k) $ch->exchange_declare(N . $k, $k, false, false, false);
    declare_q($ch, $q, $p['queue_arguments']);
    $ch->queue_bind($q, N . 'direct', $p['direct_key']);
    $ch->queue_bind($q, N . 'fanout', '');
    $ch->queue_bind($q, N . 'topic', $p['topic_pattern']);
    $ch->queue_bind($q, N . 'headers', '', false, new AMQPTable($p['headers_binding']));
    $hdrs = array_filter($p['headers_binding'], fn($k) => !str_starts_with($k, 'x-'), ARRAY_FILTER_USE_KEY);
    $ch->basic_publish(msg('direct'), N . 'direct', $p['direct_key']);
    $ch->basic_publish(msg('fanout'), N . 'fanout', 'ignored');
    $ch->basic_publish(msg('topic'), N . 'topic', $p['topic_key']);
    $ch->basic_publish(msg('headers', ['application_headers' => new AMQPTable($hdrs)]), N . 'headers', '');
    confirms($ch);
    $got = [];
    for ($i = 0; $i < 4; $i++) {
        $m = $ch->basic_get($q, true);
        $got[] = $m ? $m->getBody() : null;
    }
    if ($got !== ['direct', 'fanout', 'topic', 'headers']) throw new Fail('routed bodies ' . show($got));
    for ($i = 0; $i < $p['overfill']; $i++) $ch->basic_publish(msg("m$i"), '', $q);
    confirms($ch);
    [, $count] = $ch->queue_declare($q, true);
    if ($count !== $p['max_length']) throw new Fail("message_count $count after overfill, want {$p['max_length']}");
    $m = $ch->basic_get($q, true);
    $first = 'm' . ($p['overfill'] - $p['max_length']);
    if (!$m || $m->getBody() !== $first) throw new Fail('head after overfill ' . show($m ? $m->getBody() : null) . ", want $first");
    $args = $p['queue_arguments'];
    $args['x-max-length'] = $p['conflicting_max_length'];
    try {
        declare_q($ch, $q, $args);
        throw new Fail('inequivalent redeclare succeeded');
    } catch (AMQPProtocolChannelException $e) {
        if ($e->getCode() !== $p['reply_code']) throw new Fail('inequivalent redeclare closed the channel with ' . $e->getCode());
        $closed = $e->getCode() . ' ' . $e->getMessage();
    }
    $ch2 = $c->channel();
    $ch2->queue_delete($q);
    foreach ($kinds as $k) $ch2->exchange_delete(N . $k);
    $c->close();
    return "4 exchange types routed; max-length kept $count; redeclare: $closed";
};

$S['publish_properties'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'props';
    declare_q($ch, $q);
    $ch->basic_publish(canonical_message(), '', $q);
    $m = get_eventually($ch, $q);
    if (!$m) throw new Fail('message not in queue');
    $m->ack();
    $ch->queue_delete($q);
    $c->close();
    $diffs = compare_canonical($m->getBody(), props_of($m));
    if ($diffs) throw new Fail(implode('; ', $diffs));
    return 'body, 12 properties and headers unchanged';
};

$S['consume_ack_prefetch'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'prefetch';
    declare_q($ch, $q);
    $ch->confirm_select();
    for ($i = 0; $i < $p['messages']; $i++) $ch->basic_publish(msg((string)$i), '', $q);
    confirms($ch);
    $ch->basic_qos(0, $p['prefetch'], false);
    $received = [];
    $ch->basic_consume($q, '', false, false, false, false, function ($m) use (&$received) { $received[] = $m; });
    $pump = function ($limit) use ($ch) {
        try { $ch->wait(null, false, $limit); } catch (AMQPTimeoutException $e) {}
    };
    $deadline = microtime(true) + 10;
    while (count($received) < $p['prefetch'] && microtime(true) < $deadline) $pump(0.5);
    $holdUntil = microtime(true) + $p['hold_ms'] / 1000;
    while (($left = $holdUntil - microtime(true)) > 0) $pump($left);
    $before = count($received);
    if ($before !== $p['prefetch']) throw new Fail("$before delivered before any ack, want {$p['prefetch']}");
    for ($acked = 0; $acked < $p['messages']; $acked++) {
        $deadline = microtime(true) + 5;
        while ($acked >= count($received)) {
            if (microtime(true) > $deadline) throw new Fail("stalled after $acked acks, " . count($received) . ' received');
            $pump(0.5);
        }
        $received[$acked]->ack();
    }
    $bodies = array_map(fn($m) => (int)$m->getBody(), $received);
    if ($bodies !== range(0, $p['messages'] - 1)) throw new Fail('order/contents ' . show($bodies));
    foreach ($received as $m) if ($m->isRedelivered()) throw new Fail('a message was redelivered');
    $ch2 = $c->channel();
    [, $left] = $ch2->queue_declare($q, true);
    $ch2->queue_delete($q);
    $c->close();
    if ($left !== 0) throw new Fail("$left messages left");
    return "$before in flight before acks; " . count($bodies) . ' in order';
};

$S['get'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'get';
    declare_q($ch, $q);
    $ch->confirm_select();
    $ch->basic_publish(msg('get-me'), '', $q);
    confirms($ch);
    $m = $ch->basic_get($q, false);
    if (!$m || $m->getBody() !== 'get-me') throw new Fail('first get: ' . show($m ? $m->getBody() : null));
    if ($m->getMessageCount() !== 0 || $m->isRedelivered()) {
        throw new Fail('message_count ' . show($m->getMessageCount()) . ', redelivered ' . show($m->isRedelivered()));
    }
    $m->ack();
    $m2 = $ch->basic_get($q, false);
    $ch->queue_delete($q);
    $c->close();
    if ($m2 !== null) throw new Fail('second get was not get-empty');
    return 'get-ok (message_count 0) then get-empty';
};

$S['nack_requeue'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'nack';
    declare_q($ch, $q);
    $ch->confirm_select();
    $ch->basic_publish(msg('nack-me'), '', $q);
    confirms($ch);
    $m1 = $ch->basic_get($q, false);
    if (!$m1) throw new Fail('no message');
    $m1->nack(true);
    $m2 = get_eventually($ch, $q);
    if (!$m2) throw new Fail('message not requeued');
    $m2->ack();
    $ch->queue_delete($q);
    $c->close();
    if ($m1->isRedelivered() || !$m2->isRedelivered() || $m1->getBody() !== $m2->getBody()) {
        throw new Fail('redelivered ' . show($m1->isRedelivered()) . '->' . show($m2->isRedelivered()));
    }
    return 'requeued with redelivered=true';
};

$S['reject_dlx'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    [$dlx, $dlq] = dlx_pair($ch, '');
    $q = N . 'work';
    declare_q($ch, $q, ['x-dead-letter-exchange' => $dlx]);
    $ch->confirm_select();
    $ch->basic_publish(msg('reject-me'), '', $q);
    confirms($ch);
    $m = $ch->basic_get($q, false);
    if (!$m) throw new Fail('no message');
    $m->reject(false);
    $d = get_eventually($ch, $dlq);
    if ($d) $d->ack();
    $ch->queue_delete($q);
    $ch->queue_delete($dlq);
    $ch->exchange_delete($dlx);
    $c->close();
    if (!$d) throw new Fail('nothing in the dead-letter queue');
    if ($d->getBody() !== 'reject-me') throw new Fail('dead-lettered body ' . show($d->getBody()));
    $first = x_death_check(props_of($d), $p['reason'], $q, ['count' => 1, 'exchange' => '', 'routing-keys' => [$q]]);
    return "x-death reason {$first['reason']}, count {$first['count']}";
};

$S['delivery_limit_dlq'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    [$dlx, $dlq] = dlx_pair($ch, '2');
    $q = N . 'limited';
    declare_q($ch, $q, ['x-queue-type' => 'quorum', 'x-delivery-limit' => $p['delivery_limit'],
        'x-dead-letter-exchange' => $dlx], true);
    $ch->confirm_select();
    $ch->basic_publish(msg('limit-me'), '', $q);
    confirms($ch);
    $deliveries = 0;
    while (true) {
        $m = get_eventually($ch, $q, 1.0);
        if (!$m) break;
        $deliveries++;
        if ($deliveries > $p['deliveries'] + 2) break;
        $m->nack(true);
    }
    $d = get_eventually($ch, $dlq);
    if ($d) $d->ack();
    $ch->queue_delete($q);
    $ch->queue_delete($dlq);
    $ch->exchange_delete($dlx);
    $c->close();
    if ($deliveries !== $p['deliveries']) throw new Fail("delivered $deliveries times, want {$p['deliveries']}");
    if (!$d) throw new Fail('nothing in the dead-letter queue');
    $first = x_death_check(props_of($d), $p['reason'], $q);
    return "$deliveries deliveries, then x-death reason {$first['reason']}";
};

$S['publisher_confirms'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'confirms';
    declare_q($ch, $q);
    $acked = 0;
    $nacked = 0;
    $ch->set_ack_handler(function ($m) use (&$acked) { $acked++; });
    $ch->set_nack_handler(function ($m) use (&$nacked) { $nacked++; });
    $ch->confirm_select();
    for ($i = 0; $i < $p['messages']; $i++) $ch->basic_publish(msg((string)$i), '', $q);
    $ch->wait_for_pending_acks(10);
    [, $count] = $ch->queue_declare($q, true);
    $ch->queue_delete($q);
    $c->close();
    if ($acked !== $p['messages'] || $nacked) throw new Fail("$acked acked, $nacked nacked");
    if ($count !== $p['messages']) throw new Fail("$count messages in queue");
    return "{$p['messages']} acked";
};

$S['mandatory_return'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $returned = [];
    $ch->set_return_listener(function ($code, $text, $exchange, $key, $m) use (&$returned) {
        $returned[] = [$code, $text, $key, $m->getBody()];
    });
    $key = N . 'nowhere';
    $ch->basic_publish(msg('bounce'), '', $key, true);
    $deadline = microtime(true) + 5;
    while (!$returned && microtime(true) < $deadline) {
        try { $ch->wait(null, false, 0.5); } catch (AMQPTimeoutException $e) {}
    }
    $c->close();
    if (!$returned) throw new Fail('no basic.return');
    $got = $returned[0];
    if ($got !== [$p['reply_code'], $p['reply_text'], $key, 'bounce']) throw new Fail('return ' . show($got));
    return "basic.return {$got[0]} {$got[1]}";
};

$S['server_cancel'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'cancelme';
    declare_q($ch, $q);
    $tag = $ch->basic_consume($q, '', false, false, false, false, function ($m) {});
    $other = $c->channel();
    $other->queue_delete($q);
    $cancelled = null;
    $deadline = microtime(true) + 5;
    while ($cancelled === null && microtime(true) < $deadline) {
        try {
            $ch->wait(null, false, 0.5);
        } catch (AMQPTimeoutException $e) {
        } catch (AMQPBasicCancelException $e) {
            // php-amqplib reports a server-sent basic.cancel by throwing this from wait()
            $cancelled = $e->getConsumerTag();
        }
    }
    $open = $ch->is_open();
    if ($open) $ch->queue_declare(N . 'cancelme.probe', false, false, false, true); // channel still usable
    $open = $ch->is_open();
    $c->close();
    if ($cancelled === null) throw new Fail('no basic.cancel from the server');
    if ($cancelled !== $tag) throw new Fail("cancel for $cancelled, consumer was $tag");
    if (!$open) throw new Fail('consuming channel closed');
    return 'basic.cancel received; channel open';
};

$S['empty_body'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'empty';
    declare_q($ch, $q);
    $ch->basic_publish(msg('', ['content_type' => $p['content_type']]), '', $q);
    $m = get_eventually($ch, $q);
    $ch->queue_delete($q);
    $c->close();
    if (!$m) throw new Fail('no message');
    $ct = $m->get_properties()['content_type'] ?? null;
    if ($m->getBody() !== '' || $ct !== $p['content_type']) {
        throw new Fail(strlen($m->getBody()) . ' bytes, content type ' . show($ct));
    }
    return '0-byte body';
};

$S['large_body'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $q = N . 'large';
    declare_q($ch, $q);
    $pattern = '';
    for ($i = 0; $i < $p['modulus']; $i++) $pattern .= chr($i);
    $data = substr(str_repeat($pattern, intdiv($p['size'], $p['modulus']) + 1), 0, $p['size']);
    $ch->basic_publish(msg($data), '', $q);
    $m = get_eventually($ch, $q, 10);
    $ch->queue_delete($q);
    $c->close();
    if (!$m) throw new Fail('no message');
    $b = $m->getBody();
    if (strlen($b) !== strlen($data) || hash('sha256', $b) !== hash('sha256', $data)) {
        throw new Fail('length ' . strlen($b) . ', sha256 differs');
    }
    return strlen($b) . ' bytes unchanged';
};

$S['heartbeat_idle'] = function ($p) {
    $c = connect($p['heartbeat_s']);
    $hb = $c->getHeartbeat();
    if ($hb !== $p['heartbeat_s']) {
        $c->close();
        throw new Fail('negotiated heartbeat ' . show($hb));
    }
    // php-amqplib has no I/O thread: its PCNTL sender writes heartbeats from SIGALRM.
    $sender = new PCNTLHeartbeatSender($c);
    $sender->register();
    $until = microtime(true) + $p['idle_s'];
    while (($left = $until - microtime(true)) > 0) usleep((int)(min($left, 0.2) * 1000000));
    $sender->unregister();
    if (!$c->isConnected()) throw new Fail('connection closed while idle');
    $ch = $c->channel();
    $q = N . 'heartbeat';
    declare_q($ch, $q);
    $ch->basic_publish(msg('alive'), '', $q);
    $m = get_eventually($ch, $q);
    $ch->queue_delete($q);
    $c->close();
    if (!$m || $m->getBody() !== 'alive') throw new Fail('round trip after idle failed');
    return "heartbeat {$hb}s; usable after {$p['idle_s']}s idle";
};

$S['clean_close'] = function ($p) {
    $c = connect();
    $ch = $c->channel();
    $ch->close();
    $c->close();
    if ($c->isConnected() || $ch->is_open()) throw new Fail('not closed');
    return 'channel and connection closed';
};

function cross_queue($pub, $con)
{
    global $SPEC;
    return str_replace(['{publisher}', '{consumer}'], [$pub, $con], $SPEC['cross_client']['queue']);
}

function cross_publish($consumers)
{
    $c = connect();
    $ch = $c->channel();
    $ch->confirm_select();
    foreach ($consumers as $con) {
        $q = cross_queue(CLIENT, $con);
        declare_q($ch, $q);
        $ch->basic_publish(canonical_message(), '', $q);
    }
    confirms($ch);
    $c->close();
    return 'published to ' . count($consumers) . ' queues';
}

function cross_consume($pub)
{
    $c = connect();
    $ch = $c->channel();
    $q = cross_queue($pub, CLIENT);
    $m = get_eventually($ch, $q);
    if (!$m) {
        $c->close();
        throw new Fail("nothing in $q");
    }
    $m->ack();
    $ch->queue_delete($q);
    $c->close();
    $diffs = compare_canonical($m->getBody(), props_of($m));
    if ($diffs) throw new Fail(implode('; ', $diffs));
    return 'unchanged';
}

function emit($scenario, $status, $detail, $extra = [])
{
    $line = array_merge(['client' => CLIENT, 'scenario' => $scenario, 'status' => $status, 'detail' => (string)$detail], $extra);
    echo json_encode($line, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
}

class Timeout extends Exception {}

// Each scenario is bounded by SIGALRM. heartbeat_idle hands SIGALRM to the heartbeat sender
// for its idle phase; its other waits are bounded, and run.sh bounds the whole driver.
function run($scenario, $fn, $timeout, $extra = [])
{
    pcntl_async_signals(true);
    pcntl_signal(SIGALRM, function () { throw new Timeout('scenario timed out'); });
    pcntl_alarm((int)ceil($timeout));
    try {
        emit($scenario, 'pass', $fn(), $extra);
    } catch (Skip $e) {
        emit($scenario, 'skip', $e->getMessage(), $extra);
    } catch (Throwable $e) {
        emit($scenario, 'fail', get_class($e) . ': ' . $e->getMessage(), $extra);
    } finally {
        pcntl_alarm(0);
    }
}

$opts = getopt('', ['mode:', 'peers:', 'only:']);
$mode = $opts['mode'] ?? 'scenarios';
$peers = array_values(array_filter(explode(',', $opts['peers'] ?? '')));
$crossTimeout = $SPEC['cross_client']['timeout_s'];
if ($mode === 'cross-publish') {
    run('cross_publish', fn() => cross_publish($peers), $crossTimeout);
} elseif ($mode === 'cross-consume') {
    foreach ($peers as $pub) run('cross', fn() => cross_consume($pub), $crossTimeout, ['publisher' => $pub]);
} else {
    $only = array_values(array_filter(explode(',', $opts['only'] ?? '')));
    foreach ($SPEC['scenarios'] as $sc) {
        if ($only && !in_array($sc['id'], $only, true)) continue;
        run($sc['id'], fn() => $S[$sc['id']]($sc['params']), $sc['timeout_s']);
    }
}
