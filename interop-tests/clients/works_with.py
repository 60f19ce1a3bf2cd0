"""Writes the README's "Works with" table from the last report (report.md by default).

usage: works_with.py [--report report.md] [--out works-with.md]
One row per client: the library and its version (pinned in python/requirements.txt,
node/package.json or the workspace's Cargo.lock, or the installed Debian package), then
passed/failed/skipped counted over its scenarios, the cross-client cells it read, and its own
checks (Celery)."""

import argparse
import json
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))

# client -> (language, library, where its version comes from)
LIBRARIES = {
    "pika": ("Python", "pika", ("pip", "pika")),
    "aio-pika": ("Python", "aio-pika", ("pip", "aio-pika")),
    "celery": ("Python", "Celery + kombu", ("pip", "celery", "kombu")),
    "amqplib": ("JavaScript", "amqplib", ("npm", "amqplib")),
    "rascal": ("JavaScript", "rascal (on amqplib)", ("npm", "rascal")),
    "amqp091-go": ("Go", "amqp091-go", ("deb", "golang-github-rabbitmq-amqp091-go-dev")),
    "java-client": ("Java", "RabbitMQ Java client", ("deb", "librabbitmq-client-java")),
    "php-amqplib": ("PHP", "php-amqplib", ("deb", "php-amqplib")),
    "bunny": ("Ruby", "Bunny", ("deb", "ruby-bunny")),
    "rabbitmq-c": ("C", "rabbitmq-c tools (amqp-tools)", ("deb", "amqp-tools")),
    "lapin": ("Rust", "lapin", ("cargo", "lapin")),
    "amqprs": ("Rust", "amqprs", ("cargo", "amqprs")),
}


def version(how):
    kind, names = how[0], how[1:]
    out = []
    for name in names:
        v = "?"
        if kind == "pip":
            with open(os.path.join(HERE, "python", "requirements.txt")) as f:
                for line in f:
                    if line.lower().startswith(name.lower() + "=="):
                        v = line.strip().split("==", 1)[1]
        elif kind == "npm":
            with open(os.path.join(HERE, "node", "package.json")) as f:
                v = json.load(f)["dependencies"].get(name, "?")
        elif kind == "cargo":
            with open(os.path.join(HERE, "..", "..", "Cargo.lock"), encoding="utf-8") as f:
                found = re.search(r'^name = "%s"\nversion = "([^"]+)"' % re.escape(name), f.read(),
                                  re.M)
            v = found.group(1) if found else "?"
        elif kind == "deb":
            try:
                v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                                   text=True, check=False).stdout.strip() or "?"
            except OSError:
                pass
        out.append(v if len(names) == 1 else f"{name} {v}")
    return ", ".join(out)


def tables(text):
    """Yields (header cells, rows of cells) for each Markdown table in text."""
    block = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            if len(block) >= 2:
                yield block[0], block[2:]
            block = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default=os.path.join(HERE, "report.md"))
    ap.add_argument("--out", default=os.path.join(HERE, "works-with.md"))
    args = ap.parse_args()
    with open(args.report, encoding="utf-8") as f:
        text = f.read()
    broker = re.search(r"^Broker: (.*?)(;|$)", text, re.M)
    counts = {}

    def add(client, status):
        c = counts.setdefault(client, {"pass": 0, "fail": 0, "skip": 0})
        if status in c:
            c[status] += 1

    for header, rows in tables(text):
        if header[0] in ("scenario", "publisher \\ consumer"):
            for row in rows:  # a column per client: its scenarios, or what it read
                for client, status in zip(header[1:], row[1:]):
                    add(client, status)
        elif header[:3] == ["client", "check", "status"]:
            for client, _check, status in rows:
                add(client, status)

    out = [f"Generated from the last client interop run against {broker.group(1) if broker else 'Warren'}"
           " (`bash interop-tests/clients/run.sh`).", "",
           "| language | client library | version | passed | failed | skipped |",
           "| --- | --- | --- | --- | --- | --- |"]
    for client, c in counts.items():
        lang, lib, how = LIBRARIES.get(client, ("?", client, ("pip", client)))
        out.append(f"| {lang} | {lib} | {version(how)} | {c['pass']} | {c['fail']} | {c['skip']} |")
    out += ["", "Skipped means the library's API cannot express the step (see report.md for each reason)."]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
