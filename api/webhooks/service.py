"""Webhook endpoints for the routes: creation (the URL is checked by the workers' SSRF guard, resolved once), listing,
deletion, secret rotation and the attempts log. Every query is a store/ repository function."""

import base64
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session

from squeezer.api.errors import ProblemError, not_found
from squeezer.api.pagination import event_cursor
from squeezer.api.webhooks.schemas import DeliveryAttemptOut, WebhookCreate, WebhookOut, WebhookWithSecret
from squeezer.store.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, as_utc, utcnow
from squeezer.store.settings import Settings
from squeezer.store.webhooks import (
    WebhookQuotaExceeded,
    create_endpoint,
    delete_endpoint,
    find_endpoint,
    list_attempts,
    rotate_secret,
)
from squeezer.worker.webhooks import UrlPolicy, UrlRefused

SECRET_BYTES = 32
# After a rotation, messages carry a signature made with the previous secret as well for this long.
PREVIOUS_SECRET_GRACE = timedelta(hours=24)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_url(url: str, settings: Settings) -> None:
    """The delivery's own guard, here for an early 422; each delivery resolves and checks the host again."""
    try:
        UrlPolicy.from_settings(settings).pin(url)
    except UrlRefused as error:
        raise ProblemError(
            422,
            "webhook_url_refused",
            f"url: {error}",
            errors=[{"loc": ["body", "url"], "msg": str(error), "type": "webhook_url_refused"}],
        ) from None


def add_webhook(session: Session, body: WebhookCreate, tenant: str, settings: Settings) -> WebhookWithSecret:
    check_url(body.url, settings)
    events = list(dict.fromkeys(body.events))
    try:
        endpoint = create_endpoint(
            session,
            tenant=tenant,
            url=body.url,
            events=events,
            secret=new_secret(),
            limit=settings.max_webhooks_per_tenant,
        )
    except WebhookQuotaExceeded as error:
        raise ProblemError(
            409,
            "webhook_quota_exceeded",
            f"this tenant already has {error.limit} webhook endpoints (the limit); delete one first",
        ) from None
    return with_secret(endpoint)


def get_webhook(session: Session, endpoint_id: str, tenant: str) -> WebhookEndpoint:
    endpoint = find_endpoint(session, endpoint_id, tenant)
    if endpoint is None:
        raise not_found("webhook", endpoint_id)
    return endpoint


def remove_webhook(session: Session, endpoint_id: str, tenant: str) -> None:
    if not delete_endpoint(session, endpoint_id, tenant):
        raise not_found("webhook", endpoint_id)


def rotate_webhook_secret(session: Session, endpoint_id: str, tenant: str) -> WebhookWithSecret:
    endpoint = rotate_secret(
        session, endpoint_id, tenant, secret=new_secret(), previous_until=utcnow() + PREVIOUS_SECRET_GRACE
    )
    if endpoint is None:
        raise not_found("webhook", endpoint_id)
    return with_secret(endpoint)


def webhook_attempts(
    session: Session, endpoint_id: str, tenant: str, *, after: str | None, limit: int
) -> list[tuple[WebhookAttempt, WebhookDelivery]]:
    """Newest first; the cursor is the last attempt id of the previous page (a number, like event cursors)."""
    get_webhook(session, endpoint_id, tenant)
    return list_attempts(session, endpoint_id, after_id=event_cursor(after), limit=limit + 1)


def webhook_out(endpoint: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(id=endpoint.id, url=endpoint.url, events=endpoint.events, created_at=as_utc(endpoint.created_at))


def with_secret(endpoint: WebhookEndpoint) -> WebhookWithSecret:
    return WebhookWithSecret(**webhook_out(endpoint).model_dump(), secret=endpoint.secret)


def attempt_out(row: tuple[WebhookAttempt, WebhookDelivery]) -> DeliveryAttemptOut:
    attempt, delivery = row
    return DeliveryAttemptOut(
        id=attempt.id,
        message_id=delivery.id,
        event=delivery.event_type,
        attempt=attempt.attempt,
        status_code=attempt.status_code,
        error=attempt.error,
        latency_ms=attempt.latency_ms,
        next_retry_at=as_utc(attempt.next_retry_at),
        created_at=as_utc(attempt.created_at),
    )
