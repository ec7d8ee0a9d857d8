"""Webhook endpoints and their delivery attempts as the API shows them. Every field of a body is bounded; a value
past a bound is a 422 naming the field."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from squeezer.store.models import WebhookEvent

MAX_URL_CHARS = 2048


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "https://hooks.example.com/squeezer", "events": ["job.succeeded"]}]},
    )

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description=f"An https URL (at most {MAX_URL_CHARS:,} characters) whose host resolves to public addresses; "
        "loopback, private, link-local, multicast and metadata addresses are refused (422 `webhook_url_refused`) "
        "unless the server allows them.",
    )
    events: list[WebhookEvent] = Field(
        min_length=1,
        max_length=len(WebhookEvent),
        description="The events to receive, each at most once. `job.progress` is sent at most once every few "
        "seconds per endpoint.",
    )


class WebhookOut(BaseModel):
    id: str = Field(examples=["whk_5c1a"])
    url: str
    events: list[WebhookEvent]
    created_at: datetime


class WebhookWithSecret(WebhookOut):
    """An endpoint with its signing secret, shown only when it is made (creation, rotation)."""

    secret: str = Field(
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        description="Verify each message's `webhook-signature` with it (Standard Webhooks). Shown only now.",
    )


class DeliveryAttemptOut(BaseModel):
    """One attempt at sending one event: the receiver's status code or the error, and when the next try is due."""

    id: int
    message_id: str = Field(description="The message's `webhook-id`, the same on every attempt.")
    event: WebhookEvent
    attempt: int = Field(description="1 for the first try.")
    status_code: int | None
    error: str | None
    latency_ms: float
    next_retry_at: datetime | None = Field(description="None once the message was delivered or given up.")
    created_at: datetime
