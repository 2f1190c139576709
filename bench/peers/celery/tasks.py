"""The Celery app of `cargo xtask bench`: one no-op task.

BROKER (default amqp://guest:guest@127.0.0.1:5672//) and BACKEND (default redis://127.0.0.1:6379/1)
come from the environment; the bench gives each run its own RabbitMQ vhost and Redis database.
"""
import os

from celery import Celery

broker = os.environ.get("BROKER", "amqp://guest:guest@127.0.0.1:5672//")
backend = os.environ.get("BACKEND", "redis://127.0.0.1:6379/1")
app = Celery("tasks", broker=broker, backend=backend)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=16, result_expires=3600,
                broker_connection_retry_on_startup=True)


@app.task
def noop(i=None):
    return None
