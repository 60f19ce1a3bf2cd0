"""What every Python driver shares: the scenario list, the JSON-line report, the canonical
message and the field-by-field comparison of a received message against it.

A driver turns each scenario into pass/fail/skip:
  * it returns a short detail string: pass;
  * it raises Skip(reason): skip (the client cannot do that step; never counted as a pass);
  * anything else it raises (Fail, AssertionError, a client error, a timeout): fail.
"""

import argparse
import datetime
import decimal
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS_PATH = os.path.join(HERE, "..", "scenarios.json")


class Skip(Exception):
    """The client cannot do this step; the message says why."""


class Fail(Exception):
    """The broker did not behave as the scenario expects."""


def load():
    with open(SCENARIOS_PATH, encoding="utf-8") as f:
        return json.load(f)


def emit(client, scenario, status, detail, **extra):
    line = {"client": client, "scenario": scenario, "status": status, "detail": detail}
    line.update(extra)
    print(json.dumps(line, ensure_ascii=False), flush=True)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["scenarios", "cross-publish", "cross-consume"],
                   default="scenarios")
    p.add_argument("--peers", default="",
                   help="comma-separated client names: consumers (cross-publish) or "
                        "publishers (cross-consume)")
    p.add_argument("--only", default="", help="comma-separated scenario ids to run")
    return p.parse_args()


def amqp_url():
    return os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


def with_query(url, **params):
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def cross_queue(spec, publisher, consumer):
    return spec["cross_client"]["queue"].format(publisher=publisher, consumer=consumer)


def large_body(params):
    m = params["modulus"]
    pattern = bytes(i % m for i in range(m))
    reps, rest = divmod(params["size"], m)
    return pattern * reps + pattern[:rest]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def canonical_body(spec):
    return spec["canonical_message"]["body"].encode("utf-8")


def normalize(value):
    """A decoded AMQP field value as the JSON value scenarios.json writes it."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"$bytes": value.hex()}
    if isinstance(value, dict):
        return {normalize(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def same(expected, actual):
    """Deep equality that does not let True pass for 1 (Python's == would)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(same(expected[k], actual[k]) for k in expected))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(same(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, int) and isinstance(actual, int):
        return int(expected) == int(actual)  # pika decodes 'l' to its own int subclass
    return type(expected) is type(actual) and expected == actual


def compare_canonical(spec, body, properties, headers):
    """Differences between a received message and the canonical one, as a list of strings.

    properties: dict keyed as in scenarios.json, values as the client decoded them."""
    canon = spec["canonical_message"]
    diffs = []
    if body != canonical_body(spec):
        diffs.append(f"body {body!r} != {canonical_body(spec)!r}")
    for key, want in canon["properties"].items():
        got = normalize(properties.get(key))
        if not same(want, got):
            diffs.append(f"{key}: got {got!r}, want {want!r}")
    got_headers = normalize(headers or {})
    if not same(canon["headers"], got_headers):
        for key in sorted(set(canon["headers"]) | set(got_headers)):
            w, g = canon["headers"].get(key, "<missing>"), got_headers.get(key, "<missing>")
            if not same(w, g):
                diffs.append(f"header {key}: got {g!r}, want {w!r}")
    return diffs


def x_death_check(headers, reason, queue, **more):
    """Checks the first x-death entry (reason, queue, and any of `more`, with "-" for "_" in
    the key); returns it or raises Fail."""
    headers = normalize(headers or {})
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths:
        raise Fail(f"no x-death header; headers: {headers!r}")
    first = deaths[0]
    problems = []
    if first.get("reason") != reason:
        problems.append(f"reason {first.get('reason')!r}, want {reason!r}")
    if first.get("queue") != queue:
        problems.append(f"queue {first.get('queue')!r}, want {queue!r}")
    for key, want in more.items():
        key = key.replace("_", "-")
        if not same(want, first.get(key)):
            problems.append(f"{key} {first.get(key)!r}, want {want!r}")
    if problems:
        raise Fail("x-death[0]: " + "; ".join(problems) + f" (x-death: {deaths!r})")
    return first


def die(msg):
    print(msg, file=sys.stderr)
    sys.exit(2)
