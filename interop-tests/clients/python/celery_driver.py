"""Celery/kombu against the broker at AMQP_URL: starts a real Celery worker (thread pool),
runs 1,000 tasks and accounts for every result (rpc:// backend, no Redis), then a task that
fails twice and succeeds on its third attempt through Celery's retry. One JSON line per check,
client "celery". Queues and exchanges are named celery.interop.*; the rpc:// reply queue is
Celery's own (a uuid)."""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = "celery"


def emit(scenario, status, detail):
    print(json.dumps({"client": CLIENT, "scenario": scenario, "status": status, "detail": detail}),
          flush=True)


def broker_url():
    u = urllib.parse.urlparse(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    return f"amqp://guest:guest@{u.hostname}:{u.port}//"


def main():
    os.environ["CELERY_BROKER_URL"] = broker_url()
    sys.path.insert(0, HERE)
    from celery_app import add, app, flaky  # noqa: E402
    from celery.result import ResultSet

    log = open(os.environ.get("CELERY_WORKER_LOG", os.devnull), "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=threads",
         "--concurrency=8", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel=WARNING"],
        cwd=HERE, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        n = 1000
        try:
            t0 = time.time()
            results = [add.delay(i, i) for i in range(n)]
            values = ResultSet(results).join(timeout=120, propagate=False)
            bad = [(i, v) for i, v in enumerate(values) if v != 2 * i]
            states = {}
            for r in results:
                states[r.state] = states.get(r.state, 0) + 1
            if worker.poll() is not None:
                emit("celery_1000_tasks", "fail", f"worker exited with {worker.returncode}")
            elif len(values) != n or bad:
                emit("celery_1000_tasks", "fail",
                     f"{len(values)} results, {len(bad)} wrong (first {bad[:3]}); states {states}")
            else:
                emit("celery_1000_tasks", "pass",
                     f"{n} tasks run by the worker, {n} results accounted for (rpc://) in "
                     f"{time.time() - t0:.1f} s; states {states}")
        except Exception as e:  # noqa: BLE001
            emit("celery_1000_tasks", "fail", f"{type(e).__name__}: {e}")

        try:
            r = flaky.delay(uuid.uuid4().hex, 2)
            v = r.get(timeout=60)
            if v == {"attempts": 3, "retries": 2} and r.state == "SUCCESS":
                emit("celery_retry", "pass", "failed twice, retried by Celery, succeeded on attempt 3")
            else:
                emit("celery_retry", "fail", f"result {v}, state {r.state}")
        except Exception as e:  # noqa: BLE001
            emit("celery_retry", "fail", f"{type(e).__name__}: {e}")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        app.close()


if __name__ == "__main__":
    main()
