// Runs scenarios.json with the RabbitMQ Java client 5.x from Debian (librabbitmq-client-java,
// /usr/share/java/amqp-client.jar, with slf4j-api and slf4j-nop). Every name it declares
// starts with "java-client.". Each scenario runs on its own thread bounded by its timeout; one
// JSON line per scenario on stdout. scenarios.json is read with a small parser below (the
// client's com.rabbitmq.tools.json.JSONReader fails on an empty object), so nothing beyond
// Debian's jars is needed.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;
import com.rabbitmq.client.ReturnListener;
import com.rabbitmq.client.ShutdownSignalException;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

@SuppressWarnings("unchecked")
public class JavaClientDriver {
    static final String CLIENT = "java-client";
    static final String N = CLIENT + ".";
    static Map<String, Object> SPEC;
    static Map<String, Object> CANON;
    static String URL;
    static PrintStream OUT;

    static class Fail extends Exception { Fail(String m) { super(m); } }
    static class Skip extends Exception { Skip(String m) { super(m); } }

    interface Scenario { String run(Map<String, Object> p) throws Exception; }

    // --- JSON --------------------------------------------------------------------------------

    static final class Json {
        final String t;
        int i;
        Json(String t) { this.t = t; }
        void ws() { while (i < t.length() && Character.isWhitespace(t.charAt(i))) i++; }
        Object value() {
            ws();
            char c = t.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++; ws();
                if (t.charAt(i) == '}') { i++; return m; }
                while (true) {
                    ws(); String k = (String) value(); ws();
                    i++; // ':'
                    m.put(k, value()); ws();
                    if (t.charAt(i++) == '}') return m;
                }
            }
            if (c == '[') {
                List<Object> l = new ArrayList<>();
                i++; ws();
                if (t.charAt(i) == ']') { i++; return l; }
                while (true) {
                    l.add(value()); ws();
                    if (t.charAt(i++) == ']') return l;
                }
            }
            if (c == '"') {
                StringBuilder sb = new StringBuilder();
                i++;
                while (true) {
                    char d = t.charAt(i++);
                    if (d == '"') return sb.toString();
                    if (d != '\\') { sb.append(d); continue; }
                    char e = t.charAt(i++);
                    switch (e) {
                        case 'n': sb.append('\n'); break;
                        case 't': sb.append('\t'); break;
                        case 'r': sb.append('\r'); break;
                        case 'b': sb.append('\b'); break;
                        case 'f': sb.append('\f'); break;
                        case 'u': sb.append((char) Integer.parseInt(t.substring(i, i + 4), 16)); i += 4; break;
                        default: sb.append(e);
                    }
                }
            }
            if (t.startsWith("true", i)) { i += 4; return Boolean.TRUE; }
            if (t.startsWith("false", i)) { i += 5; return Boolean.FALSE; }
            if (t.startsWith("null", i)) { i += 4; return null; }
            int start = i;
            while (i < t.length() && "+-0123456789.eE".indexOf(t.charAt(i)) >= 0) i++;
            String n = t.substring(start, i);
            if (n.matches("-?\\d+")) return Long.parseLong(n);
            return Double.parseDouble(n);
        }
    }

    // --- values ------------------------------------------------------------------------------

    /** JSON value (integers as Long) to a field-table value:
     *  integers as Integer when they fit in 32 bits, else Long, as the other clients do. */
    static Object toAMQP(Object v) {
        if (v instanceof Long) {
            long l = (Long) v;
            return (l >= Integer.MIN_VALUE && l <= Integer.MAX_VALUE) ? (Object) (int) l : (Object) l;
        }
        if (v instanceof Map) {
            Map<String, Object> out = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v).entrySet()) out.put(e.getKey(), toAMQP(e.getValue()));
            return out;
        }
        if (v instanceof List) {
            List<Object> out = new ArrayList<>();
            for (Object e : (List<Object>) v) out.add(toAMQP(e));
            return out;
        }
        return v;
    }

    /** A decoded value (or a JSON value) in one comparable form: integers as Long, strings as
     *  String, dates as epoch seconds. Boolean stays Boolean, so true never equals 1. */
    static Object norm(Object v) {
        if (v instanceof LongString) return new String(((LongString) v).getBytes(), StandardCharsets.UTF_8);
        if (v instanceof byte[]) return new String((byte[]) v, StandardCharsets.UTF_8);
        if (v instanceof Integer || v instanceof Short || v instanceof Byte || v instanceof Long) return ((Number) v).longValue();
        if (v instanceof Date) return ((Date) v).getTime() / 1000;
        if (v instanceof Map) {
            Map<String, Object> out = new HashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) out.put(e.getKey().toString(), norm(e.getValue()));
            return out;
        }
        if (v instanceof List) {
            List<Object> out = new ArrayList<>();
            for (Object e : (List<Object>) v) out.add(norm(e));
            return out;
        }
        return v;
    }

    static int num(Map<String, Object> p, String k) { return ((Number) p.get(k)).intValue(); }
    static String str(Map<String, Object> p, String k) { return (String) p.get(k); }
    static byte[] b(String s) { return s.getBytes(StandardCharsets.UTF_8); }
    static String s(byte[] b) { return new String(b, StandardCharsets.UTF_8); }

    static AMQP.BasicProperties canonicalProperties() {
        Map<String, Object> p = (Map<String, Object>) CANON.get("properties");
        return new AMQP.BasicProperties.Builder()
            .contentType(str(p, "content_type")).contentEncoding(str(p, "content_encoding"))
            .deliveryMode(num(p, "delivery_mode")).priority(num(p, "priority"))
            .correlationId(str(p, "correlation_id")).replyTo(str(p, "reply_to"))
            .expiration(str(p, "expiration")).messageId(str(p, "message_id"))
            .timestamp(new Date(((Number) p.get("timestamp")).longValue() * 1000)).type(str(p, "type"))
            .userId(str(p, "user_id")).appId(str(p, "app_id"))
            .headers((Map<String, Object>) toAMQP(CANON.get("headers")))
            .build();
    }

    static List<String> compareCanonical(byte[] body, AMQP.BasicProperties pr) {
        List<String> diffs = new ArrayList<>();
        if (!s(body).equals(CANON.get("body"))) diffs.add("body " + s(body));
        Map<String, Object> got = new HashMap<>();
        got.put("content_type", pr.getContentType()); got.put("content_encoding", pr.getContentEncoding());
        got.put("delivery_mode", pr.getDeliveryMode()); got.put("priority", pr.getPriority());
        got.put("correlation_id", pr.getCorrelationId()); got.put("reply_to", pr.getReplyTo());
        got.put("expiration", pr.getExpiration()); got.put("message_id", pr.getMessageId());
        got.put("timestamp", pr.getTimestamp()); got.put("type", pr.getType());
        got.put("user_id", pr.getUserId()); got.put("app_id", pr.getAppId());
        for (Map.Entry<String, Object> e : ((Map<String, Object>) CANON.get("properties")).entrySet()) {
            Object w = norm(e.getValue()), g = norm(got.get(e.getKey()));
            if (!w.equals(g)) diffs.add(e.getKey() + ": got " + g + ", want " + w);
        }
        Map<String, Object> wantH = (Map<String, Object>) norm(CANON.get("headers"));
        Map<String, Object> gotH = (Map<String, Object>) norm(pr.getHeaders() == null ? new HashMap<>() : pr.getHeaders());
        TreeSet<String> keys = new TreeSet<>(wantH.keySet());
        keys.addAll(gotH.keySet());
        for (String k : keys) {
            Object w = wantH.getOrDefault(k, "<missing>"), g = gotH.getOrDefault(k, "<missing>");
            if (!w.equals(g)) diffs.add("header " + k + ": got " + g + " (" + g.getClass().getSimpleName() + "), want " + w);
        }
        return diffs;
    }

    static Map<String, Object> xDeathCheck(Map<String, Object> headers, String reason, String queue, Map<String, Object> more) throws Fail {
        Object deaths = norm(headers == null ? new HashMap<>() : headers);
        deaths = ((Map<String, Object>) deaths).get("x-death");
        if (!(deaths instanceof List) || ((List<?>) deaths).isEmpty()) throw new Fail("no x-death header; headers: " + headers);
        Map<String, Object> first = (Map<String, Object>) ((List<?>) deaths).get(0);
        Map<String, Object> want = new LinkedHashMap<>();
        want.put("reason", reason);
        want.put("queue", queue);
        want.putAll(more);
        List<String> problems = new ArrayList<>();
        for (Map.Entry<String, Object> e : want.entrySet()) {
            Object w = norm(e.getValue());
            if (!w.equals(first.get(e.getKey()))) problems.add(e.getKey() + " " + first.get(e.getKey()) + ", want " + w);
        }
        if (!problems.isEmpty()) throw new Fail("x-death[0]: " + String.join("; ", problems) + " (x-death: " + deaths + ")");
        return first;
    }

    // --- helpers -----------------------------------------------------------------------------

    static Connection connect(int heartbeat) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(URL);
        f.setAutomaticRecoveryEnabled(false);
        f.setTopologyRecoveryEnabled(false);
        f.setConnectionTimeout(10000);
        f.setRequestedHeartbeat(heartbeat);
        return f.newConnection();
    }

    static Connection connect() throws Exception { return connect(10); }

    static GetResponse getEventually(Channel ch, String q, double limitS) throws Exception {
        long deadline = System.nanoTime() + (long) (limitS * 1e9);
        while (true) {
            GetResponse r = ch.basicGet(q, false);
            if (r != null || System.nanoTime() > deadline) return r;
            Thread.sleep(50);
        }
    }

    static void confirms(Channel ch) throws Exception {
        if (!ch.waitForConfirms(10000)) throw new Fail("a publish was nacked");
    }

    static void declare(Channel ch, String q, Map<String, Object> args) throws IOException {
        ch.queueDeclare(q, false, false, false, args);
    }

    static String[] dlxPair(Channel ch, String suffix) throws IOException {
        String dlx = N + "dlx" + suffix, dlq = N + "dlq" + suffix;
        ch.exchangeDeclare(dlx, "fanout");
        declare(ch, dlq, null);
        ch.queueBind(dlq, dlx, "");
        return new String[] {dlx, dlq};
    }

    static AMQP.BasicProperties none() { return new AMQP.BasicProperties(); }

    static ShutdownSignalException shutdownOf(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) if (t instanceof ShutdownSignalException) return (ShutdownSignalException) t;
        return null;
    }

    // --- scenarios ---------------------------------------------------------------------------

    static final Map<String, Scenario> S = new HashMap<>();
    static {
        S.put("connect", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            boolean ok = c.isOpen() && ch.isOpen();
            c.close();
            if (!ok) throw new Fail("connection or channel not open");
            return "connection and channel open";
        });

        S.put("declare_topology", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            ch.confirmSelect();
            String q = N + "topology";
            List<String> kinds = Arrays.asList("direct", "fanout", "topic", "headers");
            for (String k : kinds) ch.exchangeDeclare(N + k, k);
            Map<String, Object> qargs = (Map<String, Object>) toAMQP(p.get("queue_arguments"));
            declare(ch, q, qargs);
            ch.queueBind(q, N + "direct", str(p, "direct_key"));
            ch.queueBind(q, N + "fanout", "");
            ch.queueBind(q, N + "topic", str(p, "topic_pattern"));
            Map<String, Object> hb = (Map<String, Object>) toAMQP(p.get("headers_binding"));
            ch.queueBind(q, N + "headers", "", hb);
            Map<String, Object> hdrs = new HashMap<>();
            for (Map.Entry<String, Object> e : hb.entrySet()) if (!e.getKey().startsWith("x-")) hdrs.put(e.getKey(), e.getValue());
            ch.basicPublish(N + "direct", str(p, "direct_key"), none(), b("direct"));
            ch.basicPublish(N + "fanout", "ignored", none(), b("fanout"));
            ch.basicPublish(N + "topic", str(p, "topic_key"), none(), b("topic"));
            ch.basicPublish(N + "headers", "", new AMQP.BasicProperties.Builder().headers(hdrs).build(), b("headers"));
            confirms(ch);
            List<String> got = new ArrayList<>();
            for (int i = 0; i < 4; i++) {
                GetResponse r = ch.basicGet(q, true);
                got.add(r == null ? null : s(r.getBody()));
            }
            if (!got.equals(Arrays.asList("direct", "fanout", "topic", "headers"))) throw new Fail("routed bodies " + got);
            int over = num(p, "overfill"), max = num(p, "max_length");
            for (int i = 0; i < over; i++) ch.basicPublish("", q, none(), b("m" + i));
            confirms(ch);
            int count = ch.queueDeclarePassive(q).getMessageCount();
            if (count != max) throw new Fail("message_count " + count + " after overfill, want " + max);
            GetResponse head = ch.basicGet(q, true);
            String first = "m" + (over - max);
            if (head == null || !s(head.getBody()).equals(first)) throw new Fail("head after overfill, want " + first);
            Map<String, Object> conflicting = new HashMap<>(qargs);
            conflicting.put("x-max-length", num(p, "conflicting_max_length"));
            String closed;
            try {
                declare(ch, q, conflicting);
                throw new Fail("inequivalent redeclare succeeded");
            } catch (IOException e) {
                ShutdownSignalException sse = shutdownOf(e);
                if (sse == null || !(sse.getReason() instanceof AMQP.Channel.Close)) throw e;
                AMQP.Channel.Close close = (AMQP.Channel.Close) sse.getReason();
                if (close.getReplyCode() != num(p, "reply_code")) throw new Fail("inequivalent redeclare closed the channel with " + close.getReplyCode());
                closed = close.getReplyCode() + " " + close.getReplyText();
            }
            Channel ch2 = c.createChannel();
            ch2.queueDelete(q);
            for (String k : kinds) ch2.exchangeDelete(N + k);
            c.close();
            return "4 exchange types routed; max-length kept " + count + "; redeclare: " + closed;
        });

        S.put("publish_properties", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "props";
            declare(ch, q, null);
            ch.basicPublish("", q, canonicalProperties(), b((String) CANON.get("body")));
            GetResponse r = getEventually(ch, q, 5);
            if (r == null) throw new Fail("message not in queue");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            ch.queueDelete(q);
            c.close();
            List<String> diffs = compareCanonical(r.getBody(), r.getProps());
            if (!diffs.isEmpty()) throw new Fail(String.join("; ", diffs));
            return "body, 12 properties and headers unchanged";
        });

        S.put("consume_ack_prefetch", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "prefetch";
            int n = num(p, "messages"), prefetch = num(p, "prefetch");
            declare(ch, q, null);
            ch.confirmSelect();
            for (int i = 0; i < n; i++) ch.basicPublish("", q, none(), b(Integer.toString(i)));
            confirms(ch);
            ch.basicQos(prefetch);
            BlockingQueue<Object[]> received = new LinkedBlockingQueue<>();
            ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties pr, byte[] body) {
                    received.add(new Object[] {env, body});
                }
            });
            long deadline = System.nanoTime() + 10_000_000_000L;
            while (received.size() < prefetch && System.nanoTime() < deadline) Thread.sleep(20);
            Thread.sleep(num(p, "hold_ms"));
            int before = received.size();
            if (before != prefetch) throw new Fail(before + " delivered before any ack, want " + prefetch);
            List<Object[]> list = new ArrayList<>();
            for (int acked = 0; acked < n; acked++) {
                Object[] d = received.poll(5, TimeUnit.SECONDS);
                if (d == null) throw new Fail("stalled after " + acked + " acks");
                list.add(d);
                ch.basicAck(((Envelope) d[0]).getDeliveryTag(), false);
            }
            for (int i = 0; i < list.size(); i++) {
                Envelope env = (Envelope) list.get(i)[0];
                String body = s((byte[]) list.get(i)[1]);
                if (!body.equals(Integer.toString(i)) || env.isRedeliver()) throw new Fail("delivery " + i + ": body " + body + " redelivered " + env.isRedeliver());
            }
            Channel ch2 = c.createChannel();
            int left = ch2.queueDeclarePassive(q).getMessageCount();
            ch2.queueDelete(q);
            c.close();
            if (left != 0) throw new Fail(left + " messages left");
            return before + " in flight before acks; " + list.size() + " in order";
        });

        S.put("get", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "get";
            declare(ch, q, null);
            ch.confirmSelect();
            ch.basicPublish("", q, none(), b("get-me"));
            confirms(ch);
            GetResponse r = ch.basicGet(q, false);
            if (r == null || !s(r.getBody()).equals("get-me")) throw new Fail("first get: " + r);
            if (r.getMessageCount() != 0 || r.getEnvelope().isRedeliver())
                throw new Fail("message_count " + r.getMessageCount() + ", redelivered " + r.getEnvelope().isRedeliver());
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            GetResponse r2 = ch.basicGet(q, false);
            ch.queueDelete(q);
            c.close();
            if (r2 != null) throw new Fail("second get was not get-empty");
            return "get-ok (message_count 0) then get-empty";
        });

        S.put("nack_requeue", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "nack";
            declare(ch, q, null);
            ch.confirmSelect();
            ch.basicPublish("", q, none(), b("nack-me"));
            confirms(ch);
            GetResponse m1 = ch.basicGet(q, false);
            if (m1 == null) throw new Fail("no message");
            ch.basicNack(m1.getEnvelope().getDeliveryTag(), false, true);
            GetResponse m2 = getEventually(ch, q, 5);
            if (m2 == null) throw new Fail("message not requeued");
            ch.basicAck(m2.getEnvelope().getDeliveryTag(), false);
            ch.queueDelete(q);
            c.close();
            if (m1.getEnvelope().isRedeliver() || !m2.getEnvelope().isRedeliver() || !Arrays.equals(m1.getBody(), m2.getBody()))
                throw new Fail("redelivered " + m1.getEnvelope().isRedeliver() + "->" + m2.getEnvelope().isRedeliver());
            return "requeued with redelivered=true";
        });

        S.put("reject_dlx", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String[] pair = dlxPair(ch, "");
            String q = N + "work";
            Map<String, Object> args = new HashMap<>();
            args.put("x-dead-letter-exchange", pair[0]);
            declare(ch, q, args);
            ch.confirmSelect();
            ch.basicPublish("", q, none(), b("reject-me"));
            confirms(ch);
            GetResponse m = ch.basicGet(q, false);
            if (m == null) throw new Fail("no message");
            ch.basicReject(m.getEnvelope().getDeliveryTag(), false);
            GetResponse d = getEventually(ch, pair[1], 5);
            if (d != null) ch.basicAck(d.getEnvelope().getDeliveryTag(), false);
            ch.queueDelete(q);
            ch.queueDelete(pair[1]);
            ch.exchangeDelete(pair[0]);
            c.close();
            if (d == null) throw new Fail("nothing in the dead-letter queue");
            if (!s(d.getBody()).equals("reject-me")) throw new Fail("dead-lettered body " + s(d.getBody()));
            Map<String, Object> more = new HashMap<>();
            more.put("count", 1);
            more.put("exchange", "");
            more.put("routing-keys", Arrays.asList(q));
            Map<String, Object> first = xDeathCheck(d.getProps().getHeaders(), str(p, "reason"), q, more);
            return "x-death reason " + first.get("reason") + ", count " + first.get("count");
        });

        S.put("delivery_limit_dlq", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String[] pair = dlxPair(ch, "2");
            String q = N + "limited";
            Map<String, Object> args = new HashMap<>();
            args.put("x-queue-type", "quorum");
            args.put("x-delivery-limit", num(p, "delivery_limit"));
            args.put("x-dead-letter-exchange", pair[0]);
            ch.queueDeclare(q, true, false, false, args);
            ch.confirmSelect();
            ch.basicPublish("", q, none(), b("limit-me"));
            confirms(ch);
            int want = num(p, "deliveries"), deliveries = 0;
            while (true) {
                GetResponse m = getEventually(ch, q, 1);
                if (m == null) break;
                deliveries++;
                if (deliveries > want + 2) break;
                ch.basicNack(m.getEnvelope().getDeliveryTag(), false, true);
            }
            GetResponse d = getEventually(ch, pair[1], 5);
            if (d != null) ch.basicAck(d.getEnvelope().getDeliveryTag(), false);
            ch.queueDelete(q);
            ch.queueDelete(pair[1]);
            ch.exchangeDelete(pair[0]);
            c.close();
            if (deliveries != want) throw new Fail("delivered " + deliveries + " times, want " + want);
            if (d == null) throw new Fail("nothing in the dead-letter queue");
            Map<String, Object> first = xDeathCheck(d.getProps().getHeaders(), str(p, "reason"), q, new HashMap<>());
            return deliveries + " deliveries, then x-death reason " + first.get("reason");
        });

        S.put("publisher_confirms", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "confirms";
            int n = num(p, "messages");
            declare(ch, q, null);
            ch.confirmSelect();
            for (int i = 0; i < n; i++) ch.basicPublish("", q, none(), b(Integer.toString(i)));
            confirms(ch);
            int count = ch.queueDeclarePassive(q).getMessageCount();
            ch.queueDelete(q);
            c.close();
            if (count != n) throw new Fail(count + " messages in queue");
            return n + " acked";
        });

        S.put("mandatory_return", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            BlockingQueue<Object[]> returned = new LinkedBlockingQueue<>();
            ch.addReturnListener(new ReturnListener() {
                @Override public void handleReturn(int code, String text, String exchange, String key, AMQP.BasicProperties pr, byte[] body) {
                    returned.add(new Object[] {code, text, key, s(body)});
                }
            });
            String key = N + "nowhere";
            ch.basicPublish("", key, true, none(), b("bounce"));
            Object[] r = returned.poll(5, TimeUnit.SECONDS);
            c.close();
            if (r == null) throw new Fail("no basic.return");
            if (!Arrays.asList(r).equals(Arrays.asList(num(p, "reply_code"), str(p, "reply_text"), key, "bounce")))
                throw new Fail("return " + Arrays.asList(r));
            return "basic.return " + r[0] + " " + r[1];
        });

        S.put("server_cancel", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "cancelme";
            declare(ch, q, null);
            BlockingQueue<String> cancelled = new LinkedBlockingQueue<>();
            String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override public void handleCancel(String consumerTag) { cancelled.add(consumerTag); }
            });
            Channel other = c.createChannel();
            other.queueDelete(q);
            String got = cancelled.poll(5, TimeUnit.SECONDS);
            Thread.sleep(100);
            boolean open = ch.isOpen();
            c.close();
            if (got == null) throw new Fail("no basic.cancel from the server");
            if (!got.equals(tag)) throw new Fail("cancel for " + got + ", consumer was " + tag);
            if (!open) throw new Fail("consuming channel closed");
            return "basic.cancel received; channel open";
        });

        S.put("empty_body", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "empty";
            declare(ch, q, null);
            ch.basicPublish("", q, new AMQP.BasicProperties.Builder().contentType(str(p, "content_type")).build(), new byte[0]);
            GetResponse r = getEventually(ch, q, 5);
            ch.queueDelete(q);
            c.close();
            if (r == null) throw new Fail("no message");
            String ct = r.getProps().getContentType();
            if (r.getBody().length != 0 || !str(p, "content_type").equals(ct)) throw new Fail("body " + r.getBody().length + " bytes, content type " + ct);
            return "0-byte body";
        });

        S.put("large_body", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            String q = N + "large";
            declare(ch, q, null);
            int size = num(p, "size"), mod = num(p, "modulus");
            byte[] data = new byte[size];
            for (int i = 0; i < size; i++) data[i] = (byte) (i % mod);
            ch.basicPublish("", q, none(), data);
            GetResponse r = getEventually(ch, q, 10);
            ch.queueDelete(q);
            c.close();
            if (r == null) throw new Fail("no message");
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            if (r.getBody().length != size || !Arrays.equals(md.digest(r.getBody()), MessageDigest.getInstance("SHA-256").digest(data)))
                throw new Fail("length " + r.getBody().length + ", sha256 differs");
            return r.getBody().length + " bytes unchanged";
        });

        S.put("heartbeat_idle", p -> {
            int hb = num(p, "heartbeat_s");
            Connection c = connect(hb);
            if (c.getHeartbeat() != hb) {
                c.close();
                throw new Fail("negotiated heartbeat " + c.getHeartbeat());
            }
            Thread.sleep(num(p, "idle_s") * 1000L); // the client's heartbeat sender keeps running
            if (!c.isOpen()) throw new Fail("connection closed while idle: " + c.getCloseReason());
            Channel ch = c.createChannel();
            String q = N + "heartbeat";
            declare(ch, q, null);
            ch.basicPublish("", q, none(), b("alive"));
            GetResponse r = getEventually(ch, q, 5);
            ch.queueDelete(q);
            c.close();
            if (r == null || !s(r.getBody()).equals("alive")) throw new Fail("round trip after idle failed");
            return "heartbeat " + hb + "s; usable after " + num(p, "idle_s") + "s idle";
        });

        S.put("clean_close", p -> {
            Connection c = connect();
            Channel ch = c.createChannel();
            ch.close();
            c.close();
            if (c.isOpen() || ch.isOpen()) throw new Fail("not closed");
            return "channel and connection closed";
        });
    }

    // --- cross-client ------------------------------------------------------------------------

    static String crossQueue(String pub, String con) {
        return ((String) ((Map<String, Object>) SPEC.get("cross_client")).get("queue"))
            .replace("{publisher}", pub).replace("{consumer}", con);
    }

    static String crossPublish(List<String> consumers) throws Exception {
        Connection c = connect();
        Channel ch = c.createChannel();
        ch.confirmSelect();
        for (String con : consumers) {
            String q = crossQueue(CLIENT, con);
            declare(ch, q, null);
            ch.basicPublish("", q, canonicalProperties(), b((String) CANON.get("body")));
        }
        confirms(ch);
        c.close();
        return "published to " + consumers.size() + " queues";
    }

    static String crossConsume(String pub) throws Exception {
        Connection c = connect();
        Channel ch = c.createChannel();
        String q = crossQueue(pub, CLIENT);
        GetResponse r = getEventually(ch, q, 5);
        if (r == null) {
            c.close();
            throw new Fail("nothing in " + q);
        }
        ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
        ch.queueDelete(q);
        c.close();
        List<String> diffs = compareCanonical(r.getBody(), r.getProps());
        if (!diffs.isEmpty()) throw new Fail(String.join("; ", diffs));
        return "unchanged";
    }

    // --- main --------------------------------------------------------------------------------

    static String quote(String v) {
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : v.toCharArray()) {
            switch (ch) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
                    else sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }

    static void emit(String scenario, String status, String detail, String publisher) {
        String line = "{\"client\": " + quote(CLIENT) + ", \"scenario\": " + quote(scenario) + ", \"status\": " + quote(status)
            + ", \"detail\": " + quote(detail == null ? "" : detail) + (publisher == null ? "" : ", \"publisher\": " + quote(publisher)) + "}";
        OUT.println(line);
        OUT.flush();
    }

    interface Body { String call() throws Exception; }

    static void run(String scenario, Body body, double timeoutS, String publisher) {
        ExecutorService ex = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "scenario-" + scenario);
            t.setDaemon(true);
            return t;
        });
        Future<String> f = ex.submit(body::call);
        try {
            emit(scenario, "pass", f.get((long) (timeoutS * 1000), TimeUnit.MILLISECONDS), publisher);
        } catch (TimeoutException e) {
            f.cancel(true);
            emit(scenario, "fail", "scenario timed out", publisher);
        } catch (Exception e) {
            Throwable t = e.getCause() != null ? e.getCause() : e;
            if (t instanceof Skip) emit(scenario, "skip", t.getMessage(), publisher);
            else emit(scenario, "fail", t.getClass().getSimpleName() + ": " + t.getMessage(), publisher);
        } finally {
            ex.shutdownNow();
        }
    }

    public static void main(String[] argv) throws Exception {
        OUT = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        String mode = "scenarios", peers = "", only = "";
        for (int i = 0; i + 1 < argv.length; i += 2) {
            switch (argv[i]) {
                case "--mode": mode = argv[i + 1]; break;
                case "--peers": peers = argv[i + 1]; break;
                case "--only": only = argv[i + 1]; break;
                default: System.err.println("unknown argument " + argv[i]); System.exit(2);
            }
        }
        String path = System.getenv("SCENARIOS_JSON");
        if (path == null) path = "interop-tests/clients/scenarios.json";
        SPEC = (Map<String, Object>) new Json(new String(Files.readAllBytes(Paths.get(path)), StandardCharsets.UTF_8)).value();
        CANON = (Map<String, Object>) SPEC.get("canonical_message");
        URL = System.getenv("AMQP_URL");
        if (URL == null) URL = "amqp://guest:guest@127.0.0.1:5672/%2f";
        List<String> peerList = new ArrayList<>();
        for (String x : peers.split(",")) if (!x.isEmpty()) peerList.add(x);
        double crossTimeout = ((Number) ((Map<String, Object>) SPEC.get("cross_client")).get("timeout_s")).doubleValue();
        if (mode.equals("cross-publish")) {
            run("cross_publish", () -> crossPublish(peerList), crossTimeout, null);
        } else if (mode.equals("cross-consume")) {
            for (String pub : peerList) run("cross", () -> crossConsume(pub), crossTimeout, pub);
        } else {
            List<String> onlyList = new ArrayList<>();
            for (String x : only.split(",")) if (!x.isEmpty()) onlyList.add(x);
            for (Object o : (List<Object>) SPEC.get("scenarios")) {
                Map<String, Object> sc = (Map<String, Object>) o;
                String id = (String) sc.get("id");
                if (!onlyList.isEmpty() && !onlyList.contains(id)) continue;
                Scenario fn = S.get(id);
                Map<String, Object> params = (Map<String, Object>) sc.get("params");
                run(id, () -> fn.run(params), ((Number) sc.get("timeout_s")).doubleValue(), null);
            }
        }
        System.exit(0);
    }
}
