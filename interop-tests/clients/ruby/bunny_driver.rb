# Runs scenarios.json with Bunny (Debian's ruby-bunny). Every name it declares starts with
# "bunny.". Each scenario is bounded by Timeout; one JSON line per scenario on stdout.
require "bunny"
require "json"
require "optparse"
require "digest"
require "timeout"

CLIENT = "bunny"
N = CLIENT + "."
SPEC = JSON.parse(File.read(ENV["SCENARIOS_JSON"] || File.join(__dir__, "..", "scenarios.json")))
URL = ENV["AMQP_URL"] || "amqp://guest:guest@127.0.0.1:5672/%2f"
$stdout.sync = true

class Fail < StandardError; end
class Skip < StandardError; end

def connect(opts = {})
  c = Bunny.new(URL, { logger: Logger.new(File::NULL), automatically_recover: false,
                       connection_timeout: 10, heartbeat: 10 }.merge(opts))
  c.start
  c
end

CANON = SPEC["canonical_message"]

def canonical_publish(ch, queue)
  p = CANON["properties"]
  opts = p.transform_keys(&:to_sym)
  opts[:timestamp] = p["timestamp"]
  opts[:headers] = CANON["headers"]
  ch.basic_publish(CANON["body"].b, "", queue, opts)
end

def norm(v)
  case v
  when Hash then v.to_h { |k, e| [k.to_s, norm(e)] }
  when Array then v.map { |e| norm(e) }
  when Time then v.to_i
  when String then (s = v.dup.force_encoding("UTF-8")).valid_encoding? ? s : { "$bytes" => v.unpack1("H*") }
  when Float then v == v.to_i ? v.to_i : v
  else v
  end
end

# amq-protocol 2.3.2 (under Bunny 2.19) cannot read some field values other clients write:
#  * it decodes 'I' (signed 32-bit) and 'b' (signed 8-bit) as unsigned, so a negative value
#    reads back as value + 2**32 or value + 2**8;
#  * its array decoder stops early (`while offset <= start + length` instead of
#    `< start + 4 + length`), dropping the last element(s) of an array of short values such as
#    'b' (aio-pika and amqplib write small integers as 'b').
# Those differences are collected apart: the client cannot read such a value, which is a skip
# (never a pass); any other difference is a fail.
UNSIGNED_ARTIFACTS = []

def same_value(want, got, path)
  case want
  when Hash
    got.is_a?(Hash) && want.keys.sort == got.keys.sort && want.all? { |k, v| same_value(v, got[k], "#{path}.#{k}") }
  when Array
    return false unless got.is_a?(Array) && got.size <= want.size
    return false unless got.each_index.all? { |i| same_value(want[i], got[i], "#{path}[#{i}]") }
    if got.size < want.size
      UNSIGNED_ARTIFACTS << "#{path}: array #{want.inspect} read as #{got.inspect}"
    end
    true
  when Integer
    return true if got == want
    if got.is_a?(Integer) && want.negative? && [2**8, 2**32].any? { |m| want >= -m / 2 && got == want + m }
      UNSIGNED_ARTIFACTS << "#{path}: #{want} read as #{got}"
      return true
    end
    false
  else
    want == got # true and 1 differ (Ruby's == keeps them apart)
  end
end

def compare_canonical(body, props)
  UNSIGNED_ARTIFACTS.clear
  diffs = []
  diffs << "body #{body.inspect}" if body.b != CANON["body"].b
  CANON["properties"].each do |k, want|
    got = norm(props[k.to_sym])
    diffs << "#{k}: got #{got.inspect}, want #{want.inspect}" unless got == want
  end
  got_h = norm(props[:headers] || {})
  (CANON["headers"].keys | got_h.keys).sort.each do |k|
    w, g = CANON["headers"].fetch(k, "<missing>"), got_h.fetch(k, "<missing>")
    diffs << "header #{k}: got #{g.inspect}, want #{w.inspect}" unless same_value(w, g, "header #{k}")
  end
  if diffs.empty? && !UNSIGNED_ARTIFACTS.empty?
    raise Skip, "amq-protocol #{AMQ::Protocol::VERSION} cannot decode what this publisher wrote " \
                "(signed 'b'/'I' read as unsigned; short-element arrays cut short): " \
                "#{UNSIGNED_ARTIFACTS.join('; ')}; everything else unchanged"
  end
  diffs
end

def x_death_check(headers, reason, queue, more = {})
  deaths = norm(headers || {})["x-death"]
  raise Fail, "no x-death header; headers: #{headers.inspect}" unless deaths.is_a?(Array) && !deaths.empty?
  first = deaths[0]
  want = { "reason" => reason, "queue" => queue }.merge(more)
  problems = want.reject { |k, v| first[k] == v }.map { |k, v| "#{k} #{first[k].inspect}, want #{v.inspect}" }
  raise Fail, "x-death[0]: #{problems.join('; ')} (x-death: #{deaths.inspect})" unless problems.empty?
  first
end

def get_eventually(ch, q, limit = 5.0)
  deadline = Time.now + limit
  loop do
    info, props, body = ch.basic_get(q, manual_ack: true)
    return [info, props, body] if info || Time.now > deadline
    sleep 0.05
  end
end

def wait_until(limit)
  deadline = Time.now + limit
  until yield
    return false if Time.now > deadline
    sleep 0.02
  end
  true
end

def confirms!(ch)
  raise Fail, "publishes nacked: #{ch.nacked_set.to_a}" unless ch.wait_for_confirms
end

def dlx_pair(ch, suffix)
  dlx, dlq = N + "dlx" + suffix, N + "dlq" + suffix
  ch.exchange_declare(dlx, "fanout")
  ch.queue_declare(dlq)
  ch.queue_bind(dlq, dlx)
  [dlx, dlq]
end

S = {}

S["connect"] = lambda do |p|
  c = connect
  ch = c.create_channel
  ok = c.open? && ch.open?
  c.close
  raise Fail, "connection or channel not open" unless ok
  "connection and channel open"
end

S["declare_topology"] = lambda do |p|
  c = connect
  ch = c.create_channel
  ch.confirm_select
  q = N + "topology"
  kinds = %w[direct fanout topic headers]
  kinds.each { |k| ch.exchange_declare(N + k, k) }
  ch.queue_declare(q, arguments: p["queue_arguments"])
  ch.queue_bind(q, N + "direct", routing_key: p["direct_key"])
  ch.queue_bind(q, N + "fanout", routing_key: "")
  ch.queue_bind(q, N + "topic", routing_key: p["topic_pattern"])
  ch.queue_bind(q, N + "headers", routing_key: "", arguments: p["headers_binding"])
  hdrs = p["headers_binding"].reject { |k, _| k.start_with?("x-") }
  ch.basic_publish("direct", N + "direct", p["direct_key"])
  ch.basic_publish("fanout", N + "fanout", "ignored")
  ch.basic_publish("topic", N + "topic", p["topic_key"])
  ch.basic_publish("headers", N + "headers", "", headers: hdrs)
  confirms!(ch)
  got = 4.times.map do
    info, _, body = ch.basic_get(q, manual_ack: false)
    info ? body : nil
  end
  raise Fail, "routed bodies #{got.inspect}" unless got == %w[direct fanout topic headers]
  p["overfill"].times { |i| ch.basic_publish("m#{i}", "", q) }
  confirms!(ch)
  count = ch.queue_declare(q, passive: true).message_count
  raise Fail, "message_count #{count} after overfill, want #{p['max_length']}" unless count == p["max_length"]
  _, _, body = ch.basic_get(q, manual_ack: false)
  first = "m#{p['overfill'] - p['max_length']}"
  raise Fail, "head after overfill #{body.inspect}, want #{first}" unless body == first
  args = p["queue_arguments"].merge("x-max-length" => p["conflicting_max_length"])
  closed = nil
  begin
    ch.queue_declare(q, arguments: args)
    raise Fail, "inequivalent redeclare succeeded"
  rescue Bunny::ChannelLevelException => e
    code = e.channel_close.reply_code
    raise Fail, "inequivalent redeclare closed the channel with #{code}" unless code == p["reply_code"]
    closed = "#{code} #{e.channel_close.reply_text}"
  end
  ch2 = c.create_channel
  ch2.queue_delete(q)
  kinds.each { |k| ch2.exchange_delete(N + k) }
  c.close
  "4 exchange types routed; max-length kept #{count}; redeclare: #{closed}"
end

S["publish_properties"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "props"
  ch.queue_declare(q)
  canonical_publish(ch, q)
  info, props, body = get_eventually(ch, q)
  raise Fail, "message not in queue" unless info
  ch.basic_ack(info.delivery_tag.to_i, false)
  ch.queue_delete(q)
  c.close
  diffs = compare_canonical(body, props)
  raise Fail, diffs.join("; ") unless diffs.empty?
  "body, 12 properties and headers unchanged"
end

S["consume_ack_prefetch"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "prefetch"
  ch.queue_declare(q)
  ch.confirm_select
  p["messages"].times { |i| ch.basic_publish(i.to_s, "", q) }
  confirms!(ch)
  ch.basic_qos(p["prefetch"])
  received = Queue.new
  list = []
  queue = ch.queue(q, passive: true)
  queue.subscribe(manual_ack: true) { |info, _props, body| received << [info, body] }
  wait_until(10) { received.size >= p["prefetch"] }
  sleep p["hold_ms"] / 1000.0
  before = received.size
  raise Fail, "#{before} delivered before any ack, want #{p['prefetch']}" unless before == p["prefetch"]
  p["messages"].times do |acked|
    item = nil
    begin
      Timeout.timeout(5) { item = received.pop }
    rescue Timeout::Error
      raise Fail, "stalled after #{acked} acks"
    end
    list << item
    ch.ack(item[0].delivery_tag)
  end
  sleep 0.2
  bodies = list.map { |_, b| b.to_i }
  raise Fail, "order/contents #{bodies.inspect}" unless bodies == (0...p["messages"]).to_a
  raise Fail, "a message was redelivered" if list.any? { |i, _| i.redelivered? }
  ch2 = c.create_channel
  left = ch2.queue_declare(q, passive: true).message_count
  ch2.queue_delete(q)
  c.close
  raise Fail, "#{left} messages left" unless left.zero?
  "#{before} in flight before acks; #{bodies.size} in order"
end

S["get"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "get"
  ch.queue_declare(q)
  ch.confirm_select
  ch.basic_publish("get-me", "", q)
  confirms!(ch)
  info, _, body = ch.basic_get(q, manual_ack: true)
  raise Fail, "first get: #{info.inspect} #{body.inspect}" unless info && body == "get-me"
  raise Fail, "message_count #{info.message_count}, redelivered #{info.redelivered}" if info.message_count != 0 || info.redelivered
  ch.basic_ack(info.delivery_tag.to_i, false)
  info2, = ch.basic_get(q, manual_ack: true)
  ch.queue_delete(q)
  c.close
  raise Fail, "second get was not get-empty" if info2
  "get-ok (message_count 0) then get-empty"
end

S["nack_requeue"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "nack"
  ch.queue_declare(q)
  ch.confirm_select
  ch.basic_publish("nack-me", "", q)
  confirms!(ch)
  m1, _, b1 = ch.basic_get(q, manual_ack: true)
  raise Fail, "no message" unless m1
  ch.basic_nack(m1.delivery_tag.to_i, false, true)
  m2, _, b2 = get_eventually(ch, q)
  raise Fail, "message not requeued" unless m2
  ch.basic_ack(m2.delivery_tag.to_i, false)
  ch.queue_delete(q)
  c.close
  if m1.redelivered || !m2.redelivered || b1 != b2
    raise Fail, "redelivered #{m1.redelivered}->#{m2.redelivered}, bodies #{b1.inspect} #{b2.inspect}"
  end
  "requeued with redelivered=true"
end

S["reject_dlx"] = lambda do |p|
  c = connect
  ch = c.create_channel
  dlx, dlq = dlx_pair(ch, "")
  q = N + "work"
  ch.queue_declare(q, arguments: { "x-dead-letter-exchange" => dlx })
  ch.confirm_select
  ch.basic_publish("reject-me", "", q)
  confirms!(ch)
  m, = ch.basic_get(q, manual_ack: true)
  raise Fail, "no message" unless m
  ch.basic_reject(m.delivery_tag.to_i, false)
  dm, dprops, dbody = get_eventually(ch, dlq)
  ch.basic_ack(dm.delivery_tag.to_i, false) if dm
  ch.queue_delete(q)
  ch.queue_delete(dlq)
  ch.exchange_delete(dlx)
  c.close
  raise Fail, "nothing in the dead-letter queue" unless dm
  raise Fail, "dead-lettered body #{dbody.inspect}" unless dbody == "reject-me"
  d = x_death_check(dprops[:headers], p["reason"], q, "count" => 1, "exchange" => "", "routing-keys" => [q])
  "x-death reason #{d['reason']}, count #{d['count']}"
end

S["delivery_limit_dlq"] = lambda do |p|
  c = connect
  ch = c.create_channel
  dlx, dlq = dlx_pair(ch, "2")
  q = N + "limited"
  ch.queue_declare(q, durable: true, arguments: {
    "x-queue-type" => "quorum", "x-delivery-limit" => p["delivery_limit"], "x-dead-letter-exchange" => dlx })
  ch.confirm_select
  ch.basic_publish("limit-me", "", q)
  confirms!(ch)
  deliveries = 0
  loop do
    m, = get_eventually(ch, q, 1.0)
    break unless m
    deliveries += 1
    break if deliveries > p["deliveries"] + 2
    ch.basic_nack(m.delivery_tag.to_i, false, true)
  end
  dm, dprops, = get_eventually(ch, dlq)
  ch.basic_ack(dm.delivery_tag.to_i, false) if dm
  ch.queue_delete(q)
  ch.queue_delete(dlq)
  ch.exchange_delete(dlx)
  c.close
  raise Fail, "delivered #{deliveries} times, want #{p['deliveries']}" unless deliveries == p["deliveries"]
  raise Fail, "nothing in the dead-letter queue" unless dm
  d = x_death_check(dprops[:headers], p["reason"], q)
  "#{deliveries} deliveries, then x-death reason #{d['reason']}"
end

S["publisher_confirms"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "confirms"
  ch.queue_declare(q)
  ch.confirm_select
  p["messages"].times { |i| ch.basic_publish(i.to_s, "", q) }
  confirms!(ch)
  count = ch.queue_declare(q, passive: true).message_count
  ch.queue_delete(q)
  c.close
  raise Fail, "#{count} messages in queue" unless count == p["messages"]
  "#{p['messages']} acked"
end

S["mandatory_return"] = lambda do |p|
  c = connect
  ch = c.create_channel
  returned = []
  x = ch.default_exchange
  x.on_return { |info, _props, body| returned << [info, body] }
  key = N + "nowhere"
  x.publish("bounce", routing_key: key, mandatory: true)
  wait_until(5) { !returned.empty? }
  c.close
  raise Fail, "no basic.return" if returned.empty?
  info, body = returned[0]
  got = [info.reply_code, info.reply_text, info.routing_key, body]
  raise Fail, "return #{got.inspect}" unless got == [p["reply_code"], p["reply_text"], key, "bounce"]
  "basic.return #{info.reply_code} #{info.reply_text}"
end

S["server_cancel"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "cancelme"
  queue = ch.queue(q)
  cancelled = []
  consumer = queue.subscribe(manual_ack: true, on_cancellation: ->(frame) { cancelled << frame }) { |*_| }
  other = c.create_channel
  other.queue_delete(q)
  wait_until(5) { !cancelled.empty? }
  sleep 0.1
  open_after = ch.open?
  c.close
  raise Fail, "no basic.cancel from the server" if cancelled.empty?
  tag = cancelled[0].consumer_tag
  raise Fail, "cancel for #{tag}, consumer was #{consumer.consumer_tag}" unless tag == consumer.consumer_tag
  raise Fail, "consuming channel closed" unless open_after
  "basic.cancel received; channel open"
end

S["empty_body"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "empty"
  ch.queue_declare(q)
  ch.basic_publish("", "", q, content_type: p["content_type"])
  m, props, body = get_eventually(ch, q)
  ch.queue_delete(q)
  c.close
  raise Fail, "no message" unless m
  unless body.to_s.empty? && props[:content_type] == p["content_type"]
    raise Fail, "body #{body.to_s.bytesize} bytes, content type #{props[:content_type].inspect}"
  end
  "0-byte body"
end

S["large_body"] = lambda do |p|
  c = connect
  ch = c.create_channel
  q = N + "large"
  ch.queue_declare(q)
  m = p["modulus"]
  pattern = (0...m).map(&:chr).join.b
  reps, rest = p["size"].divmod(m)
  data = pattern * reps + pattern[0, rest]
  ch.basic_publish(data, "", q)
  msg, _, body = get_eventually(ch, q, 10)
  ch.queue_delete(q)
  c.close
  raise Fail, "no message" unless msg
  if body.bytesize != data.bytesize || Digest::SHA256.hexdigest(body) != Digest::SHA256.hexdigest(data)
    raise Fail, "length #{body.bytesize}, sha256 differs"
  end
  "#{body.bytesize} bytes unchanged"
end

S["heartbeat_idle"] = lambda do |p|
  c = connect(heartbeat: p["heartbeat_s"])
  hb = c.heartbeat
  if hb != p["heartbeat_s"]
    c.close
    raise Fail, "negotiated heartbeat #{hb.inspect}"
  end
  sleep p["idle_s"] # Bunny's heartbeat sender thread keeps running
  raise Fail, "connection closed while idle" unless c.open?
  ch = c.create_channel
  q = N + "heartbeat"
  ch.queue_declare(q)
  ch.basic_publish("alive", "", q)
  _, _, body = get_eventually(ch, q)
  ch.queue_delete(q)
  c.close
  raise Fail, "round trip after idle: #{body.inspect}" unless body == "alive"
  "heartbeat #{hb}s; usable after #{p['idle_s']}s idle"
end

S["clean_close"] = lambda do |p|
  c = connect
  ch = c.create_channel
  ch.close
  c.close
  raise Fail, "not closed" unless c.closed? && ch.closed?
  "channel and connection closed"
end

def cross_queue(pub, con)
  SPEC["cross_client"]["queue"].sub("{publisher}", pub).sub("{consumer}", con)
end

def cross_publish(consumers)
  c = connect
  ch = c.create_channel
  ch.confirm_select
  consumers.each do |con|
    q = cross_queue(CLIENT, con)
    ch.queue_declare(q)
    canonical_publish(ch, q)
  end
  confirms!(ch)
  c.close
  "published to #{consumers.size} queues"
end

def cross_consume(pub)
  c = connect
  ch = c.create_channel
  q = cross_queue(pub, CLIENT)
  m, props, body = get_eventually(ch, q)
  unless m
    c.close
    raise Fail, "nothing in #{q}"
  end
  ch.basic_ack(m.delivery_tag.to_i, false)
  ch.queue_delete(q)
  c.close
  diffs = compare_canonical(body, props)
  raise Fail, diffs.join("; ") unless diffs.empty?
  "unchanged"
end

def emit(scenario, status, detail, extra = {})
  line = { "client" => CLIENT, "scenario" => scenario, "status" => status, "detail" => detail.to_s }.merge(extra)
  puts JSON.generate(line)
end

def run(scenario, timeout, extra = {})
  detail = Timeout.timeout(timeout) { yield }
  emit(scenario, "pass", detail, extra)
rescue Skip => e
  emit(scenario, "skip", e.message, extra)
rescue Exception => e # a failed expectation, a client error or the timeout
  raise if e.is_a?(Interrupt) || e.is_a?(SystemExit)
  emit(scenario, "fail", "#{e.class}: #{e.message}", extra)
end

opts = { mode: "scenarios", peers: "", only: "" }
OptionParser.new do |o|
  o.on("--mode MODE") { |v| opts[:mode] = v }
  o.on("--peers PEERS") { |v| opts[:peers] = v }
  o.on("--only ONLY") { |v| opts[:only] = v }
end.parse!
peers = opts[:peers].split(",").reject(&:empty?)
cross_timeout = SPEC["cross_client"]["timeout_s"]
case opts[:mode]
when "cross-publish"
  run("cross_publish", cross_timeout) { cross_publish(peers) }
when "cross-consume"
  peers.each { |pub| run("cross", cross_timeout, "publisher" => pub) { cross_consume(pub) } }
else
  only = opts[:only].split(",").reject(&:empty?)
  SPEC["scenarios"].each do |sc|
    next unless only.empty? || only.include?(sc["id"])
    run(sc["id"], sc["timeout_s"]) { S[sc["id"]].call(sc["params"]) }
  end
end
