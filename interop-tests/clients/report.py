"""Builds the one report of a run from the drivers' JSON lines.

usage: report.py --results FILE... --clients a,b,c --broker TEXT [--seconds N]
Prints Markdown (client by scenario, then the cross-client matrix, then every fail and skip
with its detail, then a closing 'N passed, N failed, N skipped' line) and exits 1 if any
scenario failed or has no result (a driver that crashed or hung counts as failed)."""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Clients with their own checks instead of the scenario list (not in the cross-client matrix).
EXTRA_CHECKS = {"celery": ["celery_1000_tasks", "celery_retry", "celery_restart"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", nargs="+", required=True)
    ap.add_argument("--clients", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--seconds", default="")
    ap.add_argument("--extra", default="", help="clients with their own checks, e.g. celery")
    args = ap.parse_args()
    extra = [c for c in args.extra.split(",") if c]
    clients = [c for c in args.clients.split(",") if c]
    with open(os.path.join(HERE, "scenarios.json"), encoding="utf-8") as f:
        spec = json.load(f)
    scenario_ids = [s["id"] for s in spec["scenarios"]]

    results, cross, noise = {}, {}, []
    for path in args.results:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for raw in f:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    r = json.loads(raw)
                except json.JSONDecodeError:
                    noise.append(f"{os.path.basename(path)}: {raw[:200]}")
                    continue
                if r.get("scenario") == "cross":
                    cross[(r["publisher"], r["client"])] = r
                else:
                    results[(r["client"], r["scenario"])] = r

    # A publisher that cannot publish the canonical message (it said so by skipping
    # cross_publish) makes its whole row skip: its consumers found nothing, which is no failure.
    for pub in clients:
        r = results.get((pub, "cross_publish"))
        if r and r["status"] == "skip":
            for con in clients:
                cross[(pub, con)] = {"status": "skip",
                                     "detail": f"{pub} cannot publish the canonical message"}

    missing = {"status": "fail", "detail": "no result (driver crashed or timed out)"}
    counts = {"pass": 0, "fail": 0, "skip": 0}
    notes, passes = [], []
    out = [f"# Client interop report", "",
           f"Broker: {args.broker}" + (f"; run took {args.seconds} s" if args.seconds else ""),
           "", "## Scenarios", "",
           "| scenario | " + " | ".join(clients) + " |",
           "| --- |" + " --- |" * len(clients)]
    for sid in scenario_ids:
        cells = []
        for c in clients:
            r = results.get((c, sid), missing)
            counts[r["status"]] += 1
            cells.append(r["status"])
            if r["status"] != "pass":
                notes.append(f"- {r['status']}: {c} / {sid}: {r['detail']}")
        out.append(f"| {sid} | " + " | ".join(cells) + " |")
    pub_missing = {"status": "fail", "detail": "no result"}
    for c in clients:
        r = results.get((c, "cross_publish"), pub_missing)
        if r["status"] != "pass":
            notes.append(f"- {r['status']}: {c} / cross_publish: {r['detail']}")

    out += ["", "## Cross-client matrix (row: publisher, column: consumer)", "",
            "| publisher \\ consumer | " + " | ".join(clients) + " |",
            "| --- |" + " --- |" * len(clients)]
    for pub in clients:
        cells = []
        for con in clients:
            r = cross.get((pub, con), missing)
            counts[r["status"]] += 1
            cells.append(r["status"])
            if r["status"] != "pass":
                notes.append(f"- {r['status']}: published by {pub}, read by {con}: {r['detail']}")
        out.append(f"| {pub} | " + " | ".join(cells) + " |")

    if extra:
        out += ["", "## Other checks", "", "| client | check | status |", "| --- | --- | --- |"]
        for c in extra:
            for check in EXTRA_CHECKS.get(c, []):
                r = results.get((c, check), missing)
                counts[r["status"]] += 1
                out.append(f"| {c} | {check} | {r['status']} |")
                note = f"- {r['status']}: {c} / {check}: {r['detail']}"
                (notes.append(note) if r["status"] != "pass" else passes.append(note))

    if notes:
        out += ["", "## Fails and skips", ""] + notes
    if noise:
        out += ["", "## Lines that were not results", ""] + [f"- {n}" for n in noise]
    out += ["", f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"]
    print("\n".join(out))
    sys.exit(1 if counts["fail"] else 0)


if __name__ == "__main__":
    main()
