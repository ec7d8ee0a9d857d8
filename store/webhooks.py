"""Webhook endpoints and their outbox. A job's transition (store.jobs) inserts one message per subscribed endpoint in
its own transaction, so no event is lost and none is sent for a change that rolled back; the workers' senders
(worker.webhooks) take due messages, send them and record each attempt here."""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from squeezer.store.db import changed_rows
from squeezer.store.job_document import job_document
from squeezer.store.models import (
    DeliveryStatus,
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    as_utc,
    new_id,
    utcnow,
)
from squeezer.store.statuses import JobStatus

# The event each status is reached with (`cancelling` is a request, not an outcome: it has none).
STATUS_EVENTS = {
    JobStatus.QUEUED: WebhookEvent.JOB_QUEUED,
    JobStatus.RUNNING: WebhookEvent.JOB_RUNNING,
    JobStatus.SUCCEEDED: WebhookEvent.JOB_SUCCEEDED,
    JobStatus.FAILED: WebhookEvent.JOB_FAILED,
    JobStatus.CANCELLED: WebhookEvent.JOB_CANCELLED,
}
# An endpoint gets at most one job.progress message this often, whatever the number of its tenant's jobs.
PROGRESS_INTERVAL_S = 5.0


class WebhookQuotaExceeded(Exception):
    def __init__(self, limit: int):
        super().__init__(f"at most {limit} webhook endpoints per tenant")
        self.limit = limit


def create_endpoint(
    session: Session, *, tenant: str, url: str, events: Sequence[str], secret: str, limit: int
) -> WebhookEndpoint:
    """Raises WebhookQuotaExceeded when the tenant already has `limit` endpoints (two racing creations at the limit
    may both pass, which a bound on a small number tolerates)."""
    count = session.execute(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant == tenant)
    ).scalar_one()
    if count >= limit:
        raise WebhookQuotaExceeded(limit)
    endpoint = WebhookEndpoint(tenant=tenant, url=url, events=list(events), secret=secret)
    session.add(endpoint)
    session.commit()
    return endpoint


def list_endpoints(session: Session, tenant: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant == tenant)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def find_endpoint(session: Session, endpoint_id: str, tenant: str) -> WebhookEndpoint | None:
    """The endpoint when it belongs to `tenant`: another tenant's id reads as unknown."""
    return session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant == tenant)
    )


def delete_endpoint(session: Session, endpoint_id: str, tenant: str) -> bool:
    """Deletes the endpoint with its messages and attempts: nothing more is sent to it. False when unknown."""
    if find_endpoint(session, endpoint_id, tenant) is None:
        return False
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint_id))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
    session.commit()
    return True


def rotate_secret(
    session: Session, endpoint_id: str, tenant: str, *, secret: str, previous_until: datetime
) -> WebhookEndpoint | None:
    """Replaces the secret; until `previous_until` messages are signed with the old one as well, so a receiver can
    switch without losing a message."""
    endpoint = find_endpoint(session, endpoint_id, tenant)
    if endpoint is None:
        return None
    endpoint.previous_secret, endpoint.previous_secret_until = endpoint.secret, previous_until
    endpoint.secret = secret
    session.commit()
    return endpoint


def list_attempts(
    session: Session, endpoint_id: str, *, after_id: int | None, limit: int
) -> list[tuple[WebhookAttempt, WebhookDelivery]]:
    """Up to `limit` of the endpoint's attempts, newest first, older than attempt `after_id`, with their message."""
    query = (
        select(WebhookAttempt, WebhookDelivery)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookAttempt.endpoint_id == endpoint_id)
    )
    if after_id is not None:
        query = query.where(WebhookAttempt.id < after_id)
    rows = session.execute(query.order_by(WebhookAttempt.id.desc()).limit(limit))
    return [(attempt, delivery) for attempt, delivery in rows]


def _subscribed(session: Session, job_id: str, event: WebhookEvent) -> list[WebhookEndpoint]:
    """The endpoints of the job's tenant that asked for `event` (a tenant has a bounded few)."""
    endpoints = session.scalars(
        select(WebhookEndpoint).join(Job, Job.tenant == WebhookEndpoint.tenant).where(Job.id == job_id)
    )
    return [endpoint for endpoint in endpoints if event in endpoint.events]


def _insert_messages(session: Session, job_id: str, event: WebhookEvent, endpoint_ids: list[str]) -> None:
    if not endpoint_ids:
        return
    job = session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar_one()
    now = utcnow()
    body = json.dumps(
        {"type": event, "timestamp": now.isoformat(), "data": job_document(job).model_dump(mode="json")},
        separators=(",", ":"),
    )
    session.execute(
        insert(WebhookDelivery),
        [
            {
                "id": new_id("msg"),
                "endpoint_id": endpoint_id,
                "event_type": event,
                "body": body,
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint_id in endpoint_ids
        ],
    )


def queue_status_event(session: Session, job_id: str, status: JobStatus) -> None:
    """In the transaction that moved the job to `status`, before its commit: one message per endpoint that asked for
    the status's event, with the job as it now is (flushed)."""
    event = STATUS_EVENTS.get(status)
    if event is not None:
        _insert_messages(session, job_id, event, [endpoint.id for endpoint in _subscribed(session, job_id, event)])


def queue_progress_event(session: Session, job_id: str) -> None:
    """In the transaction that updated the job's progress: a job.progress message for each endpoint that asked for
    them and got none for PROGRESS_INTERVAL_S (claimed by a conditional update, so concurrent jobs send one)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=PROGRESS_INTERVAL_S)
    due = []
    for endpoint in _subscribed(session, job_id, WebhookEvent.JOB_PROGRESS):
        claimed = changed_rows(
            session,
            update(WebhookEndpoint)
            .where(
                WebhookEndpoint.id == endpoint.id,
                or_(WebhookEndpoint.progress_sent_at.is_(None), WebhookEndpoint.progress_sent_at < cutoff),
            )
            .values(progress_sent_at=now)
            .execution_options(synchronize_session=False),  # SQLite's loaded times are naive: compare in SQL only
        )
        if claimed == 1:
            due.append(endpoint.id)
    _insert_messages(session, job_id, WebhookEvent.JOB_PROGRESS, due)


def take_due_deliveries(session: Session, *, lease_s: float, limit: int) -> list[str]:
    """Pending messages whose attempt is due, each moved `lease_s` ahead by a conditional update (so two senders
    take it once); should its sender die, it is due again then: at least once."""
    now = utcnow()
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    taken = []
    for delivery_id, due_at in due:
        taken_now = changed_rows(
            session,
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at == due_at,
            )
            .values(next_attempt_at=now + timedelta(seconds=lease_s)),
        )
        if taken_now == 1:
            taken.append(delivery_id)
    session.commit()
    return taken


def message_to_send(session: Session, delivery_id: str) -> tuple[WebhookDelivery, WebhookEndpoint] | None:
    """The pending message with its endpoint; None when it was sent, gave up, or its endpoint was deleted."""
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
    ).first()
    return None if row is None else (row[0], row[1])


def record_attempt(
    session: Session,
    delivery: WebhookDelivery,
    *,
    status_code: int | None,
    error: str | None,
    latency_ms: float,
    succeeded: bool,
    next_retry_at: datetime | None,
) -> None:
    """Logs the attempt and moves the message on: sent, failed for good (no `next_retry_at`), or due again."""
    attempt = delivery.attempts + 1
    if succeeded:
        status, next_at = DeliveryStatus.SUCCEEDED, None
    else:
        status, next_at = (DeliveryStatus.PENDING, next_retry_at) if next_retry_at else (DeliveryStatus.FAILED, None)
    changed = changed_rows(
        session,
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(status=status, attempts=WebhookDelivery.attempts + 1, next_attempt_at=next_at),
    )
    if changed == 1:  # the endpoint may have been deleted meanwhile
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                endpoint_id=delivery.endpoint_id,
                attempt=attempt,
                status_code=status_code,
                error=error,
                latency_ms=latency_ms,
                next_retry_at=None if succeeded else next_retry_at,
            )
        )
    session.commit()


def secrets_to_sign(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The current secret, and the previous one during its rotation's grace period."""
    until = as_utc(endpoint.previous_secret_until)
    if endpoint.previous_secret and until is not None and until > now:
        return [endpoint.secret, endpoint.previous_secret]
    return [endpoint.secret]
