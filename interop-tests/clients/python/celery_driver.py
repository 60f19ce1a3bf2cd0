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


def start_worker():
    log = open(os.environ.get("CELERY_WORKER_LOG", os.devnull), "a")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=threads",
         "--concurrency=8", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel=WARNING"],
        cwd=HERE, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)


def stop_worker(worker):
    worker.terminate()
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()


def main():
    if "--mode" in sys.argv and sys.argv[sys.argv.index("--mode") + 1] == "restart":
        return restart_check()
    os.environ["CELERY_BROKER_URL"] = broker_url()
    sys.path.insert(0, HERE)
    from celery_app import add, app, flaky  # noqa: E402
    from celery.result import ResultSet

    worker = start_worker()
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
        stop_worker(worker)
        app.close()


def restart_check():
    """1,000 tasks on a durable queue (persistent messages, late acks); once a fifth of the
    results are in, asks run.sh to restart the broker (a file CELERY_RESTART_REQUEST, answered
    by CELERY_RESTART_DONE); the worker reconnects and every task must still end with its
    result. Results go to files, the worker runs on this machine."""
    import tempfile
    req, done = os.environ.get("CELERY_RESTART_REQUEST"), os.environ.get("CELERY_RESTART_DONE")
    if not req or not done:
        emit("celery_restart", "skip", "run by run.sh only (it restarts the broker)")
        return
    results_dir = tempfile.mkdtemp(prefix="celery-results.")
    os.environ["CELERY_BROKER_URL"] = broker_url()
    os.environ["CELERY_RESULT_BACKEND"] = f"file://{results_dir}"
    os.environ["CELERY_QUEUE"] = "celery.interop.restart"
    sys.path.insert(0, HERE)
    from celery_app import app, slow_add  # noqa: E402

    n = 1000
    worker = start_worker()
    try:
        t0 = time.time()
        results = [slow_add.delay(i, i) for i in range(n)]
        app.pool.force_close_all()  # the client's own connection is not under test here
        deadline = time.time() + 60
        while len(os.listdir(results_dir)) < n // 5 and time.time() < deadline:
            time.sleep(0.05)
        before = len(os.listdir(results_dir))
        open(req, "w").close()
        deadline = time.time() + 90
        while not os.path.exists(done) and time.time() < deadline:
            time.sleep(0.1)
        if not os.path.exists(done):
            emit("celery_restart", "fail", "the broker was not restarted")
            return
        deadline = time.time() + 120
        while len(os.listdir(results_dir)) < n and time.time() < deadline:
            time.sleep(0.2)
        values, missing = {}, []
        for i, r in enumerate(results):
            if r.ready():
                values[i] = r.get(timeout=1, propagate=False)
            else:
                missing.append(i)
        bad = [(i, v) for i, v in values.items() if v != 2 * i]
        if worker.poll() is not None:
            emit("celery_restart", "fail", f"worker exited with {worker.returncode}")
        elif missing or bad:
            try:
                with app.connection_for_write() as conn:
                    ok = conn.default_channel.queue_declare(os.environ["CELERY_QUEUE"], passive=True)
                    left = f"{ok.message_count} ready in the queue, {ok.consumer_count} consumers"
            except Exception as e:  # noqa: BLE001
                left = f"queue not inspected: {e}"
            emit("celery_restart", "fail", f"{len(missing)} results missing (first {missing[:5]}), "
                 f"{len(bad)} wrong; {before} were in before the restart; {left}")
        else:
            emit("celery_restart", "pass",
                 f"{n} results accounted for; {before} before the broker restart, the rest after "
                 f"the worker reconnected ({time.time() - t0:.1f} s)")
    except Exception as e:  # noqa: BLE001
        emit("celery_restart", "fail", f"{type(e).__name__}: {e}")
    finally:
        stop_worker(worker)
        app.close()


if __name__ == "__main__":
    main()
