// Runs scenarios.json with amqp091-go, built offline from Debian's
// golang-github-rabbitmq-amqp091-go-dev (GOPATH mode on /usr/share/gocode). Every name it
// declares starts with "amqp091-go.". Each scenario is bounded by a timer; one JSON line per
// scenario on stdout.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const client = "amqp091-go"
const prefix = client + "."

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

func fail(format string, a ...interface{}) error { return failure{fmt.Sprintf(format, a...)} }

type scenario struct {
	ID       string                 `json:"id"`
	TimeoutS float64                `json:"timeout_s"`
	Params   map[string]interface{} `json:"params"`
}

type spec struct {
	Canonical struct {
		Body       string                 `json:"body"`
		Properties map[string]interface{} `json:"properties"`
		Headers    map[string]interface{} `json:"headers"`
	} `json:"canonical_message"`
	Scenarios []scenario `json:"scenarios"`
	Cross     struct {
		Queue    string  `json:"queue"`
		TimeoutS float64 `json:"timeout_s"`
	} `json:"cross_client"`
}

var (
	S   spec
	URL string
)

// --- values ----------------------------------------------------------------------------------

// toAMQP turns JSON values (numbers as json.Number) into field-table values: integers as
// int32 when they fit, else int64, as the other clients encode them.
func toAMQP(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			if i >= -1<<31 && i < 1<<31 {
				return int32(i)
			}
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]interface{}:
		t := amqp.Table{}
		for k, e := range x {
			t[k] = toAMQP(e)
		}
		return t
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, e := range x {
			out[i] = toAMQP(e)
		}
		return out
	}
	return v
}

// norm turns a decoded field value (or a JSON value) into one comparable form.
func norm(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case int8:
		return int64(x)
	case uint8:
		return int64(x)
	case int16:
		return int64(x)
	case uint16:
		return int64(x)
	case int32:
		return int64(x)
	case uint32:
		return int64(x)
	case int:
		return int64(x)
	case float32:
		return float64(x)
	case []byte:
		return string(x)
	case time.Time:
		return x.Unix()
	case amqp.Table:
		return norm(map[string]interface{}(x))
	case map[string]interface{}:
		out := map[string]interface{}{}
		for k, e := range x {
			out[k] = norm(e)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, e := range x {
			out[i] = norm(e)
		}
		return out
	}
	return v
}

func str(p map[string]interface{}, k string) string { return p[k].(string) }
func num(p map[string]interface{}, k string) int {
	i, _ := p[k].(json.Number).Int64()
	return int(i)
}

func canonicalPublishing() amqp.Publishing {
	p := S.Canonical.Properties
	return amqp.Publishing{
		ContentType: str(p, "content_type"), ContentEncoding: str(p, "content_encoding"),
		DeliveryMode: uint8(num(p, "delivery_mode")), Priority: uint8(num(p, "priority")),
		CorrelationId: str(p, "correlation_id"), ReplyTo: str(p, "reply_to"),
		Expiration: str(p, "expiration"), MessageId: str(p, "message_id"),
		Timestamp: time.Unix(int64(num(p, "timestamp")), 0), Type: str(p, "type"),
		UserId: str(p, "user_id"), AppId: str(p, "app_id"),
		Headers: toAMQP(S.Canonical.Headers).(amqp.Table),
		Body:    []byte(S.Canonical.Body),
	}
}

func compareCanonical(d amqp.Delivery) []string {
	var diffs []string
	if string(d.Body) != S.Canonical.Body {
		diffs = append(diffs, fmt.Sprintf("body %q", d.Body))
	}
	got := map[string]interface{}{
		"content_type": d.ContentType, "content_encoding": d.ContentEncoding,
		"delivery_mode": d.DeliveryMode, "priority": d.Priority,
		"correlation_id": d.CorrelationId, "reply_to": d.ReplyTo, "expiration": d.Expiration,
		"message_id": d.MessageId, "timestamp": d.Timestamp, "type": d.Type,
		"user_id": d.UserId, "app_id": d.AppId,
	}
	for k, want := range S.Canonical.Properties {
		if !reflect.DeepEqual(norm(want), norm(got[k])) {
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", k, got[k], want))
		}
	}
	wantH := norm(S.Canonical.Headers).(map[string]interface{})
	gotH := norm(map[string]interface{}(d.Headers)).(map[string]interface{})
	keys := map[string]bool{}
	for k := range wantH {
		keys[k] = true
	}
	for k := range gotH {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		if !reflect.DeepEqual(wantH[k], gotH[k]) {
			diffs = append(diffs, fmt.Sprintf("header %s: got %#v, want %#v", k, gotH[k], wantH[k]))
		}
	}
	return diffs
}

func xDeathCheck(h amqp.Table, reason, queue string, more map[string]interface{}) (map[string]interface{}, error) {
	deaths, ok := norm(h["x-death"]).([]interface{})
	if !ok || len(deaths) == 0 {
		return nil, fail("no x-death header; headers: %v", h)
	}
	first, _ := deaths[0].(map[string]interface{})
	want := map[string]interface{}{"reason": reason, "queue": queue}
	for k, v := range more {
		want[k] = v
	}
	var problems []string
	for k, v := range want {
		if !reflect.DeepEqual(norm(v), first[k]) {
			problems = append(problems, fmt.Sprintf("%s %v, want %v", k, first[k], v))
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, fail("x-death[0]: %s (x-death: %v)", strings.Join(problems, "; "), deaths)
	}
	return first, nil
}

// --- helpers ---------------------------------------------------------------------------------

func dial() (*amqp.Connection, error) {
	return amqp.DialConfig(URL, amqp.Config{Heartbeat: 10 * time.Second, Dial: amqp.DefaultDial(10 * time.Second)})
}

func pub(ch *amqp.Channel, exchange, key string, msg amqp.Publishing) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ch.PublishWithContext(ctx, exchange, key, false, false, msg)
}

func body(b string) amqp.Publishing { return amqp.Publishing{Body: []byte(b)} }

// confirmed puts ch in confirm mode and returns a function that waits for n confirms.
func confirmed(ch *amqp.Channel) (func(n int) error, error) {
	if err := ch.Confirm(false); err != nil {
		return nil, err
	}
	acks := ch.NotifyPublish(make(chan amqp.Confirmation, 1000))
	return func(n int) error {
		for i := 0; i < n; i++ {
			select {
			case c := <-acks:
				if !c.Ack {
					return fail("publish %d nacked", c.DeliveryTag)
				}
			case <-time.After(10 * time.Second):
				return fail("%d of %d confirms", i, n)
			}
		}
		return nil
	}, nil
}

// getEventually basic.gets until a message arrives (dead-lettering is asynchronous).
func getEventually(ch *amqp.Channel, q string, limit time.Duration) (amqp.Delivery, bool, error) {
	deadline := time.Now().Add(limit)
	for {
		d, ok, err := ch.Get(q, false)
		if err != nil || ok || time.Now().After(deadline) {
			return d, ok, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func declare(ch *amqp.Channel, q string, args amqp.Table) error {
	_, err := ch.QueueDeclare(q, false, false, false, false, args)
	return err
}

func dlxPair(ch *amqp.Channel, suffix string) (string, string, error) {
	dlx, dlq := prefix+"dlx"+suffix, prefix+"dlq"+suffix
	if err := ch.ExchangeDeclare(dlx, "fanout", false, false, false, false, nil); err != nil {
		return "", "", err
	}
	if err := declare(ch, dlq, nil); err != nil {
		return "", "", err
	}
	return dlx, dlq, ch.QueueBind(dlq, "", dlx, false, nil)
}

// --- scenarios -------------------------------------------------------------------------------

var scenarios = map[string]func(p map[string]interface{}) (string, error){
	"connect": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		if _, err := c.Channel(); err != nil {
			return "", err
		}
		return "connection and channel open", nil
	},

	"declare_topology": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			return "", err
		}
		wait, err := confirmed(ch)
		if err != nil {
			return "", err
		}
		q := prefix + "topology"
		kinds := []string{"direct", "fanout", "topic", "headers"}
		for _, k := range kinds {
			if err := ch.ExchangeDeclare(prefix+k, k, false, false, false, false, nil); err != nil {
				return "", err
			}
		}
		qargs := toAMQP(p["queue_arguments"]).(amqp.Table)
		if err := declare(ch, q, qargs); err != nil {
			return "", err
		}
		hb := toAMQP(p["headers_binding"]).(amqp.Table)
		binds := [][2]string{{"direct", str(p, "direct_key")}, {"fanout", ""}, {"topic", str(p, "topic_pattern")}}
		for _, b := range binds {
			if err := ch.QueueBind(q, b[1], prefix+b[0], false, nil); err != nil {
				return "", err
			}
		}
		if err := ch.QueueBind(q, "", prefix+"headers", false, hb); err != nil {
			return "", err
		}
		hdrs := amqp.Table{}
		for k, v := range hb {
			if !strings.HasPrefix(k, "x-") {
				hdrs[k] = v
			}
		}
		pub(ch, prefix+"direct", str(p, "direct_key"), body("direct"))
		pub(ch, prefix+"fanout", "ignored", body("fanout"))
		pub(ch, prefix+"topic", str(p, "topic_key"), body("topic"))
		pub(ch, prefix+"headers", "", amqp.Publishing{Body: []byte("headers"), Headers: hdrs})
		if err := wait(4); err != nil {
			return "", err
		}
		var got []string
		for i := 0; i < 4; i++ {
			d, ok, err := ch.Get(q, true)
			if err != nil {
				return "", err
			}
			if ok {
				got = append(got, string(d.Body))
			} else {
				got = append(got, "<none>")
			}
		}
		if strings.Join(got, ",") != "direct,fanout,topic,headers" {
			return "", fail("routed bodies %v", got)
		}
		over, maxLen := num(p, "overfill"), num(p, "max_length")
		for i := 0; i < over; i++ {
			pub(ch, "", q, body(fmt.Sprintf("m%d", i)))
		}
		if err := wait(over); err != nil {
			return "", err
		}
		qi, err := ch.QueueDeclarePassive(q, false, false, false, false, qargs)
		if err != nil {
			return "", err
		}
		if qi.Messages != maxLen {
			return "", fail("message_count %d after overfill, want %d", qi.Messages, maxLen)
		}
		d, _, err := ch.Get(q, true)
		if err != nil {
			return "", err
		}
		if first := fmt.Sprintf("m%d", over-maxLen); string(d.Body) != first {
			return "", fail("head after overfill %q, want %q", d.Body, first)
		}
		conflicting := amqp.Table{}
		for k, v := range qargs {
			conflicting[k] = v
		}
		conflicting["x-max-length"] = int32(num(p, "conflicting_max_length"))
		err = declare(ch, q, conflicting)
		var aerr *amqp.Error
		if err == nil {
			return "", fail("inequivalent redeclare succeeded")
		} else if !errors.As(err, &aerr) || aerr.Code != num(p, "reply_code") {
			return "", fail("inequivalent redeclare: %v", err)
		}
		ch2, err := c.Channel()
		if err != nil {
			return "", err
		}
		ch2.QueueDelete(q, false, false, false)
		for _, k := range kinds {
			ch2.ExchangeDelete(prefix+k, false, false)
		}
		return fmt.Sprintf("4 exchange types routed; max-length kept %d; redeclare: %d %s", qi.Messages, aerr.Code, aerr.Reason), nil
	},

	"publish_properties": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "props"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		if err := pub(ch, "", q, canonicalPublishing()); err != nil {
			return "", err
		}
		d, ok, err := getEventually(ch, q, 5*time.Second)
		if err != nil || !ok {
			return "", fail("message not in queue (%v)", err)
		}
		d.Ack(false)
		ch.QueueDelete(q, false, false, false)
		if diffs := compareCanonical(d); len(diffs) > 0 {
			return "", fail("%s", strings.Join(diffs, "; "))
		}
		return "body, 12 properties and headers unchanged", nil
	},

	"consume_ack_prefetch": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "prefetch"
		n, prefetch := num(p, "messages"), num(p, "prefetch")
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		wait, err := confirmed(ch)
		if err != nil {
			return "", err
		}
		for i := 0; i < n; i++ {
			pub(ch, "", q, body(fmt.Sprint(i)))
		}
		if err := wait(n); err != nil {
			return "", err
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return "", err
		}
		deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return "", err
		}
		var got []amqp.Delivery
		hold := time.After(time.Duration(num(p, "hold_ms")) * time.Millisecond)
	collect:
		for {
			select {
			case d := <-deliveries:
				got = append(got, d)
			case <-hold:
				if len(got) >= prefetch {
					break collect
				}
				hold = time.After(time.Duration(num(p, "hold_ms")) * time.Millisecond)
			}
		}
		before := len(got)
		if before != prefetch {
			return "", fail("%d delivered before any ack, want %d", before, prefetch)
		}
		for acked := 0; acked < n; acked++ {
			for acked >= len(got) {
				select {
				case d := <-deliveries:
					got = append(got, d)
				case <-time.After(5 * time.Second):
					return "", fail("stalled after %d acks", acked)
				}
			}
			got[acked].Ack(false)
		}
		for i, d := range got {
			if string(d.Body) != fmt.Sprint(i) || d.Redelivered {
				return "", fail("delivery %d: body %q redelivered %v", i, d.Body, d.Redelivered)
			}
		}
		ch2, _ := c.Channel()
		qi, err := ch2.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			return "", err
		}
		ch2.QueueDelete(q, false, false, false)
		if qi.Messages != 0 {
			return "", fail("%d messages left", qi.Messages)
		}
		return fmt.Sprintf("%d in flight before acks; %d in order", before, len(got)), nil
	},

	"get": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "get"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		wait, _ := confirmed(ch)
		pub(ch, "", q, body("get-me"))
		if err := wait(1); err != nil {
			return "", err
		}
		d, ok, err := ch.Get(q, false)
		if err != nil || !ok || string(d.Body) != "get-me" {
			return "", fail("first get: ok %v err %v", ok, err)
		}
		if d.MessageCount != 0 || d.Redelivered {
			return "", fail("message_count %d, redelivered %v", d.MessageCount, d.Redelivered)
		}
		d.Ack(false)
		_, ok2, err := ch.Get(q, false)
		ch.QueueDelete(q, false, false, false)
		if err != nil || ok2 {
			return "", fail("second get was not get-empty (%v)", err)
		}
		return "get-ok (message_count 0) then get-empty", nil
	},

	"nack_requeue": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "nack"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		wait, _ := confirmed(ch)
		pub(ch, "", q, body("nack-me"))
		if err := wait(1); err != nil {
			return "", err
		}
		d1, ok, err := ch.Get(q, false)
		if err != nil || !ok {
			return "", fail("no message (%v)", err)
		}
		d1.Nack(false, true)
		d2, ok, err := getEventually(ch, q, 5*time.Second)
		if err != nil || !ok {
			return "", fail("message not requeued (%v)", err)
		}
		d2.Ack(false)
		ch.QueueDelete(q, false, false, false)
		if d1.Redelivered || !d2.Redelivered || !bytes.Equal(d1.Body, d2.Body) {
			return "", fail("redelivered %v->%v", d1.Redelivered, d2.Redelivered)
		}
		return "requeued with redelivered=true", nil
	},

	"reject_dlx": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		dlx, dlq, err := dlxPair(ch, "")
		if err != nil {
			return "", err
		}
		q := prefix + "work"
		if err := declare(ch, q, amqp.Table{"x-dead-letter-exchange": dlx}); err != nil {
			return "", err
		}
		wait, _ := confirmed(ch)
		pub(ch, "", q, body("reject-me"))
		if err := wait(1); err != nil {
			return "", err
		}
		m, ok, err := ch.Get(q, false)
		if err != nil || !ok {
			return "", fail("no message (%v)", err)
		}
		m.Reject(false)
		d, ok, err := getEventually(ch, dlq, 5*time.Second)
		if ok {
			d.Ack(false)
		}
		ch.QueueDelete(q, false, false, false)
		ch.QueueDelete(dlq, false, false, false)
		ch.ExchangeDelete(dlx, false, false)
		if err != nil || !ok {
			return "", fail("nothing in the dead-letter queue (%v)", err)
		}
		if string(d.Body) != "reject-me" {
			return "", fail("dead-lettered body %q", d.Body)
		}
		first, err := xDeathCheck(d.Headers, str(p, "reason"), q, map[string]interface{}{
			"count": int64(1), "exchange": "", "routing-keys": []interface{}{q}})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("x-death reason %v, count %v", first["reason"], first["count"]), nil
	},

	"delivery_limit_dlq": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		dlx, dlq, err := dlxPair(ch, "2")
		if err != nil {
			return "", err
		}
		q := prefix + "limited"
		_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{
			"x-queue-type": "quorum", "x-delivery-limit": int32(num(p, "delivery_limit")),
			"x-dead-letter-exchange": dlx})
		if err != nil {
			return "", err
		}
		wait, _ := confirmed(ch)
		pub(ch, "", q, body("limit-me"))
		if err := wait(1); err != nil {
			return "", err
		}
		want := num(p, "deliveries")
		deliveries := 0
		for {
			m, ok, err := getEventually(ch, q, time.Second)
			if err != nil {
				return "", err
			}
			if !ok {
				break
			}
			deliveries++
			if deliveries > want+2 {
				break
			}
			m.Nack(false, true)
		}
		d, ok, err := getEventually(ch, dlq, 5*time.Second)
		if ok {
			d.Ack(false)
		}
		ch.QueueDelete(q, false, false, false)
		ch.QueueDelete(dlq, false, false, false)
		ch.ExchangeDelete(dlx, false, false)
		if deliveries != want {
			return "", fail("delivered %d times, want %d", deliveries, want)
		}
		if err != nil || !ok {
			return "", fail("nothing in the dead-letter queue (%v)", err)
		}
		first, err := xDeathCheck(d.Headers, str(p, "reason"), q, nil)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d deliveries, then x-death reason %v", deliveries, first["reason"]), nil
	},

	"publisher_confirms": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "confirms"
		n := num(p, "messages")
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		wait, err := confirmed(ch)
		if err != nil {
			return "", err
		}
		for i := 0; i < n; i++ {
			if err := pub(ch, "", q, body(fmt.Sprint(i))); err != nil {
				return "", err
			}
		}
		if err := wait(n); err != nil {
			return "", err
		}
		qi, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			return "", err
		}
		ch.QueueDelete(q, false, false, false)
		if qi.Messages != n {
			return "", fail("%d messages in queue", qi.Messages)
		}
		return fmt.Sprintf("%d acked", n), nil
	},

	"mandatory_return": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		returns := ch.NotifyReturn(make(chan amqp.Return, 1))
		key := prefix + "nowhere"
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ch.PublishWithContext(ctx, "", key, true, false, body("bounce")); err != nil {
			return "", err
		}
		select {
		case r := <-returns:
			if int(r.ReplyCode) != num(p, "reply_code") || r.ReplyText != str(p, "reply_text") ||
				r.RoutingKey != key || string(r.Body) != "bounce" {
				return "", fail("return %d %s %s %q", r.ReplyCode, r.ReplyText, r.RoutingKey, r.Body)
			}
			return fmt.Sprintf("basic.return %d %s", r.ReplyCode, r.ReplyText), nil
		case <-time.After(5 * time.Second):
			return "", fail("no basic.return")
		}
	},

	"server_cancel": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "cancelme"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		cancels := ch.NotifyCancel(make(chan string, 1))
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		if _, err := ch.Consume(q, "go-consumer", false, false, false, false, nil); err != nil {
			return "", err
		}
		other, _ := c.Channel()
		if _, err := other.QueueDelete(q, false, false, false); err != nil {
			return "", err
		}
		select {
		case tag := <-cancels:
			if tag != "go-consumer" {
				return "", fail("cancel for %q", tag)
			}
		case <-time.After(5 * time.Second):
			return "", fail("no basic.cancel from the server")
		}
		select {
		case e := <-closes:
			return "", fail("consuming channel closed: %v", e)
		case <-time.After(100 * time.Millisecond):
		}
		return "basic.cancel received; channel open", nil
	},

	"empty_body": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "empty"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		pub(ch, "", q, amqp.Publishing{ContentType: str(p, "content_type"), Body: []byte{}})
		d, ok, err := getEventually(ch, q, 5*time.Second)
		ch.QueueDelete(q, false, false, false)
		if err != nil || !ok {
			return "", fail("no message (%v)", err)
		}
		if len(d.Body) != 0 || d.ContentType != str(p, "content_type") {
			return "", fail("body %d bytes, content type %q", len(d.Body), d.ContentType)
		}
		return "0-byte body", nil
	},

	"large_body": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		defer c.Close()
		ch, _ := c.Channel()
		q := prefix + "large"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		size, mod := num(p, "size"), num(p, "modulus")
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i % mod)
		}
		pub(ch, "", q, amqp.Publishing{Body: data})
		d, ok, err := getEventually(ch, q, 10*time.Second)
		ch.QueueDelete(q, false, false, false)
		if err != nil || !ok {
			return "", fail("no message (%v)", err)
		}
		if sha256.Sum256(d.Body) != sha256.Sum256(data) {
			return "", fail("length %d, sha256 differs", len(d.Body))
		}
		return fmt.Sprintf("%d bytes unchanged", len(d.Body)), nil
	},

	"heartbeat_idle": func(p map[string]interface{}) (string, error) {
		hb := time.Duration(num(p, "heartbeat_s")) * time.Second
		c, err := amqp.DialConfig(URL, amqp.Config{Heartbeat: hb, Dial: amqp.DefaultDial(10 * time.Second)})
		if err != nil {
			return "", err
		}
		defer c.Close()
		if c.Config.Heartbeat != hb {
			return "", fail("negotiated heartbeat %v", c.Config.Heartbeat)
		}
		closes := c.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case e := <-closes:
			return "", fail("connection closed while idle: %v", e)
		case <-time.After(time.Duration(num(p, "idle_s")) * time.Second):
		}
		ch, err := c.Channel()
		if err != nil {
			return "", err
		}
		q := prefix + "heartbeat"
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		pub(ch, "", q, body("alive"))
		d, ok, err := getEventually(ch, q, 5*time.Second)
		ch.QueueDelete(q, false, false, false)
		if err != nil || !ok || string(d.Body) != "alive" {
			return "", fail("round trip after idle failed (%v)", err)
		}
		return fmt.Sprintf("heartbeat %v; usable after %ds idle", c.Config.Heartbeat, num(p, "idle_s")), nil
	},

	"clean_close": func(p map[string]interface{}) (string, error) {
		c, err := dial()
		if err != nil {
			return "", err
		}
		ch, err := c.Channel()
		if err != nil {
			return "", err
		}
		if err := ch.Close(); err != nil {
			return "", err
		}
		if err := c.Close(); err != nil {
			return "", err
		}
		if !c.IsClosed() {
			return "", fail("connection not closed")
		}
		return "channel and connection closed", nil
	},
}

// --- cross-client ----------------------------------------------------------------------------

func crossQueue(publisher, consumer string) string {
	return strings.NewReplacer("{publisher}", publisher, "{consumer}", consumer).Replace(S.Cross.Queue)
}

func crossPublish(consumers []string) (string, error) {
	c, err := dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	ch, _ := c.Channel()
	wait, err := confirmed(ch)
	if err != nil {
		return "", err
	}
	for _, con := range consumers {
		q := crossQueue(client, con)
		if err := declare(ch, q, nil); err != nil {
			return "", err
		}
		if err := pub(ch, "", q, canonicalPublishing()); err != nil {
			return "", err
		}
	}
	if err := wait(len(consumers)); err != nil {
		return "", err
	}
	return fmt.Sprintf("published to %d queues", len(consumers)), nil
}

func crossConsume(publisher string) (string, error) {
	c, err := dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	ch, _ := c.Channel()
	q := crossQueue(publisher, client)
	d, ok, err := getEventually(ch, q, 5*time.Second)
	if err != nil || !ok {
		return "", fail("nothing in %s (%v)", q, err)
	}
	d.Ack(false)
	ch.QueueDelete(q, false, false, false)
	if diffs := compareCanonical(d); len(diffs) > 0 {
		return "", fail("%s", strings.Join(diffs, "; "))
	}
	return "unchanged", nil
}

// --- main ------------------------------------------------------------------------------------

func emit(sc, status, detail string, extra map[string]string) {
	line := map[string]string{"client": client, "scenario": sc, "status": status, "detail": detail}
	for k, v := range extra {
		line[k] = v
	}
	b, _ := json.Marshal(line)
	fmt.Println(string(b))
}

func run(sc string, f func() (string, error), timeoutS float64, extra map[string]string) {
	type result struct {
		detail string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		d, err := f()
		done <- result{d, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			emit(sc, "fail", r.err.Error(), extra)
		} else {
			emit(sc, "pass", r.detail, extra)
		}
	case <-time.After(time.Duration(timeoutS * float64(time.Second))):
		emit(sc, "fail", "scenario timed out", extra)
	}
}

func main() {
	mode := flag.String("mode", "scenarios", "scenarios | cross-publish | cross-consume")
	peers := flag.String("peers", "", "comma-separated client names")
	only := flag.String("only", "", "comma-separated scenario ids")
	flag.Parse()
	exe, _ := os.Executable()
	path := os.Getenv("SCENARIOS_JSON")
	if path == "" {
		path = filepath.Join(filepath.Dir(exe), "..", "scenarios.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&S); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	URL = os.Getenv("AMQP_URL")
	if URL == "" {
		URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
	}
	var peerList []string
	for _, x := range strings.Split(*peers, ",") {
		if x != "" {
			peerList = append(peerList, x)
		}
	}
	switch *mode {
	case "cross-publish":
		run("cross_publish", func() (string, error) { return crossPublish(peerList) }, S.Cross.TimeoutS, nil)
	case "cross-consume":
		for _, pubName := range peerList {
			pn := pubName
			run("cross", func() (string, error) { return crossConsume(pn) }, S.Cross.TimeoutS, map[string]string{"publisher": pn})
		}
	default:
		want := map[string]bool{}
		for _, x := range strings.Split(*only, ",") {
			if x != "" {
				want[x] = true
			}
		}
		for _, sc := range S.Scenarios {
			if len(want) > 0 && !want[sc.ID] {
				continue
			}
			f, ok := scenarios[sc.ID]
			if !ok {
				emit(sc.ID, "skip", "no amqp091-go step for this scenario yet", nil)
				continue
			}
			params := sc.Params
			run(sc.ID, func() (string, error) { return f(params) }, sc.TimeoutS, nil)
		}
	}
	os.Exit(0)
}
