"""/v1/webhooks: a tenant's webhook endpoints (Standard Webhooks), their secrets and their delivery attempts. The
messages themselves are sent by the workers (worker.webhooks), never on a request."""

from fastapi import APIRouter, Response, status

from squeezer.api.deps import CurrentTenant, SessionDep, SettingsDep
from squeezer.api.errors import problem_responses
from squeezer.api.pagination import Page, PageDep, make_page
from squeezer.api.webhooks.schemas import DeliveryAttemptOut, WebhookCreate, WebhookOut, WebhookWithSecret
from squeezer.api.webhooks.service import (
    add_webhook,
    attempt_out,
    remove_webhook,
    rotate_webhook_secret,
    webhook_attempts,
    webhook_out,
)
from squeezer.store.webhooks import list_endpoints

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "",
    operation_id="createWebhook",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    responses=problem_responses(400, 409, 413, 422),
    summary="Add a webhook endpoint (its secret is shown only in this answer)",
    description="Each event is POSTed as `{type, timestamp, data}` (data: the job as GET /v1/jobs/{job_id} returns "
    "it), signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), and retried with "
    "back-off for about a day until the receiver answers 2xx. 422 `webhook_url_refused` for a URL the server will "
    "not send to; 409 `webhook_quota_exceeded` past the endpoints a tenant may have.",
)
def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, tenant: CurrentTenant
) -> WebhookWithSecret:
    return add_webhook(session, body, tenant, settings)


@router.get("", operation_id="listWebhooks", response_model=list[WebhookOut], summary="The tenant's endpoints")
def read_webhooks(session: SessionDep, tenant: CurrentTenant) -> list[WebhookOut]:
    return [webhook_out(endpoint) for endpoint in list_endpoints(session, tenant)]


@router.delete(
    "/{webhook_id}",
    operation_id="deleteWebhook",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
    summary="Delete an endpoint: nothing more is sent to it, pending messages included",
)
def delete_webhook(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> Response:
    remove_webhook(session, webhook_id, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/rotate-secret",
    operation_id="rotateWebhookSecret",
    response_model=WebhookWithSecret,
    responses=problem_responses(404),
    summary="Replace the endpoint's secret (the new one is shown only in this answer)",
    description="For 24 hours, messages carry a second signature made with the previous secret, so a receiver can "
    "switch to the new one without losing a message.",
)
def rotate_secret(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> WebhookWithSecret:
    return rotate_webhook_secret(session, webhook_id, tenant)


@router.get(
    "/{webhook_id}/deliveries",
    operation_id="listWebhookDeliveries",
    response_model=Page[DeliveryAttemptOut],
    responses=problem_responses(404, 422),
    summary="The endpoint's delivery attempts, newest first",
    description="`after` is the id of the last attempt of the previous page, a whole number (422 `invalid_cursor` "
    "otherwise).",
)
def read_deliveries(webhook_id: str, session: SessionDep, tenant: CurrentTenant, page: PageDep) -> dict:
    rows = webhook_attempts(session, webhook_id, tenant, after=page.after, limit=page.limit)
    return make_page(rows, page.limit, attempt_out)
