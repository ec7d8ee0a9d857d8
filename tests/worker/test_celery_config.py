import time

from squeezer.worker.celery_app import TASK_NAME, VISIBILITY_TIMEOUT_S, create_celery_app
from squeezer.worker.dispatch import CeleryDispatcher
from tests.servers import free_port


def test_delivery_settings_survive_worker_loss(redis_url):
    conf = create_celery_app(redis_url).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert (conf.worker_prefetch_multiplier, conf.worker_pool, conf.worker_concurrency) == (1, "solo", 1)
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S >= 24 * 3600
    assert TASK_NAME in create_celery_app(redis_url).tasks


def test_dispatcher_readiness_follows_the_broker(redis_url):
    assert CeleryDispatcher(redis_url).is_ready()
    started = time.monotonic()
    down = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0")
    assert not down.is_ready()
    down.enqueue("job_x")  # the job stays queued in the database; the reaper re-sends it
    assert time.monotonic() - started < 15
