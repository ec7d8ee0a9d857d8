"""The webhook outbox: a job's transition queues one message per subscribed endpoint of its tenant in its own
transaction (none for a transition that did not happen), on PostgreSQL and SQLite."""

import json
from datetime import timedelta

from sqlalchemy import select, update

from squeezer.store.jobs import claim_job, create_job, finish_job, reap, request_cancel, update_progress
from squeezer.store.models import Job, WebhookDelivery, WebhookEndpoint, utcnow
from squeezer.store.statuses import JobStatus
from squeezer.store.webhooks import PROGRESS_INTERVAL_S, take_due_deliveries

SPEC = {"model": {"artifact_id": "art_x"}, "dataset": {"sample": "digits"}, "method": "lwct"}
SECRET = "whsec_" + "QUJD" * 8


def add_endpoint(sessions, tenant: str, events: list[str]) -> str:
    with sessions() as session:
        endpoint = WebhookEndpoint(tenant=tenant, url="https://93.184.216.34/", events=events, secret=SECRET)
        session.add(endpoint)
        session.commit()
        return endpoint.id


def new_job(sessions, tenant: str = "alice") -> str:
    with sessions() as session:
        job, _ = create_job(session, tenant=tenant, spec=SPEC, idempotency_key=None, request_hash=None, max_attempts=3)
    return job.id


def messages(sessions, endpoint_id: str) -> list[tuple[str, dict]]:
    """(event, body) of the endpoint's messages, oldest first."""
    with sessions() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
        return [(row.event_type, json.loads(row.body)) for row in rows]


def test_each_transition_queues_one_message_per_subscribed_endpoint_of_the_tenant(sessions):
    statuses = add_endpoint(sessions, "alice", ["job.queued", "job.running", "job.succeeded", "job.failed"])
    finals = add_endpoint(sessions, "alice", ["job.succeeded"])
    bobs = add_endpoint(sessions, "bob", ["job.queued", "job.running", "job.succeeded"])
    job_id = new_job(sessions)
    with sessions() as session:
        claim_job(session, job_id, "w1")
        assert not finish_job(session, job_id, "someone-else", JobStatus.FAILED)  # not this worker's: no event
        assert finish_job(session, job_id, "w1", JobStatus.SUCCEEDED)
    assert [event for event, _ in messages(sessions, statuses)] == ["job.queued", "job.running", "job.succeeded"]
    assert [event for event, _ in messages(sessions, finals)] == ["job.succeeded"]
    assert messages(sessions, bobs) == []
    for event, body in messages(sessions, statuses):
        assert body["type"] == event and body["data"]["id"] == job_id
        assert body["data"]["status"] == event.removeprefix("job.") and body["timestamp"]
        assert set(body["data"]) >= {"progress", "links", "spec", "error", "attempts"}


def test_a_cancelled_queued_job_and_a_requeued_one_queue_their_events(sessions):
    endpoint = add_endpoint(sessions, "alice", ["job.queued", "job.running", "job.cancelled"])
    cancelled, requeued = new_job(sessions), new_job(sessions)
    with sessions() as session:
        request_cancel(session, cancelled)
        request_cancel(session, cancelled)  # already cancelled: no second event
        claim_job(session, requeued, "w1")
        session.execute(update(Job).where(Job.id == requeued).values(heartbeat_at=None))
        session.commit()
        assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == [requeued]
    events = [(event, body["data"]["id"]) for event, body in messages(sessions, endpoint)]
    assert sorted(events) == sorted(
        [
            ("job.queued", cancelled),
            ("job.queued", requeued),
            ("job.cancelled", cancelled),
            ("job.running", requeued),
            ("job.queued", requeued),
        ]
    )


def test_progress_messages_are_opt_in_and_throttled_per_endpoint(sessions):
    progress = add_endpoint(sessions, "alice", ["job.progress"])
    others = add_endpoint(sessions, "alice", ["job.queued", "job.running"])
    first, second = new_job(sessions), new_job(sessions)
    with sessions() as session:
        claim_job(session, first, "w1")
        claim_job(session, second, "w2")
        for fraction in (0.1, 0.2):
            update_progress(session, first, {"stage": "step", "fraction": fraction})
            update_progress(session, second, {"stage": "step", "fraction": fraction})
    sent = messages(sessions, progress)
    assert [(event, body["data"]["id"]) for event, body in sent] == [("job.progress", first)]
    assert sent[0][1]["data"]["progress"]["fraction"] == 0.1
    assert all(event != "job.progress" for event, _ in messages(sessions, others))
    with sessions() as session:  # the interval has passed: the next update is sent
        session.execute(
            update(WebhookEndpoint).values(progress_sent_at=utcnow() - timedelta(seconds=PROGRESS_INTERVAL_S))
        )
        session.commit()
        update_progress(session, second, {"stage": "step", "fraction": 0.3})
    assert [body["data"]["id"] for _, body in messages(sessions, progress)] == [first, second]


def test_a_due_message_is_taken_by_one_sender(sessions):
    add_endpoint(sessions, "alice", ["job.queued"])
    add_endpoint(sessions, "alice", ["job.queued"])
    new_job(sessions)
    with sessions() as session:
        taken = take_due_deliveries(session, lease_s=60, limit=10)
        assert len(taken) == 2
        assert take_due_deliveries(session, lease_s=60, limit=10) == []
