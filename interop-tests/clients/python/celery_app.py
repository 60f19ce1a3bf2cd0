"""The Celery app the celery_driver's worker runs: broker from CELERY_BROKER_URL, rpc:// results."""

import os
import threading

from celery import Celery

app = Celery("warren_interop", broker=os.environ["CELERY_BROKER_URL"], backend="rpc://")
app.conf.update(
    task_default_queue="celery.interop.tasks",
    task_default_exchange="celery.interop.tasks",
    task_default_routing_key="celery.interop.tasks",
    worker_enable_remote_control=False,  # no pidbox fanout exchanges
    worker_send_task_events=False,
    worker_prefetch_multiplier=4,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)

_attempts = {}
_lock = threading.Lock()


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=5, default_retry_delay=0.2)
def flaky(self, token, failures):
    """Raises `failures` times (retrying each time), then returns how many attempts it took."""
    with _lock:
        _attempts[token] = _attempts.get(token, 0) + 1
        n = _attempts[token]
    if n <= failures:
        raise self.retry(exc=RuntimeError(f"attempt {n} fails on purpose"))
    return {"attempts": n, "retries": self.request.retries}
