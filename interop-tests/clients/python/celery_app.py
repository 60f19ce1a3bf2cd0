"""The Celery app the celery_driver's worker runs: broker from CELERY_BROKER_URL, rpc:// results."""

import os
import threading
import time

from celery import Celery

# rpc:// by default; the broker-restart check stores results in files instead (rpc:// replies
# are transient messages on a non-durable queue, which a broker restart rightly drops).
QUEUE = os.environ.get("CELERY_QUEUE", "celery.interop.tasks")
app = Celery("warren_interop", broker=os.environ["CELERY_BROKER_URL"],
             backend=os.environ.get("CELERY_RESULT_BACKEND", "rpc://"))
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    worker_enable_remote_control=False,  # no pidbox fanout exchanges
    worker_send_task_events=False,
    worker_prefetch_multiplier=4,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    result_expires=600,
    # After a connection loss Celery lowers the prefetch count and raises it again with
    # basic.qos as tasks finish; against RabbitMQ 3.10 that left the worker stalled with
    # messages ready (seen in 1 of 2 runs). Keep the full prefetch: the check is the broker's.
    worker_enable_prefetch_count_reduction=False,
)

_attempts = {}
_lock = threading.Lock()


@app.task
def add(x, y):
    return x + y


@app.task
def slow_add(x, y):
    time.sleep(0.02)
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
