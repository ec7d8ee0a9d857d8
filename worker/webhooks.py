"""Webhook delivery (Standard Webhooks), run by the workers, never on an API request.

A message (store.webhooks: one event for one endpoint, queued in the transaction of the job's transition) is signed
with the endpoint's secret by the `standardwebhooks` library and POSTed; its id is the `webhook-id` of every attempt,
so a receiver can drop repeats. A failed attempt (an error, a timeout or a non-2xx answer) is retried with
exponential back-off and jitter until `webhook_retry_for_s` after the event, then the message is marked failed.

The SSRF guard (UrlPolicy.pin): a URL's host is resolved once here, every address it resolves to is checked, and the
connection goes to the checked address (the URL's host stays the Host header and the TLS name, verified against the
certificate), so a name that resolves elsewhere a second time (DNS rebinding) gains nothing. Loopback, private,
link-local, multicast, reserved and cloud-metadata addresses are refused unless listed in `webhook_allowed_hosts`;
https only unless `webhook_allow_http`; no redirects; TIMEOUT_S; at most MAX_ANSWER_BYTES of the answer read."""

import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from squeezer.store.models import WebhookDelivery, WebhookEndpoint, as_utc, utcnow
from squeezer.store.settings import Settings
from squeezer.store.webhooks import message_to_send, record_attempt, secrets_to_sign, take_due_deliveries
from squeezer.worker.metrics import WEBHOOK_DELIVERIES

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 1024
MAX_URL_CHARS = 2048
# A taken message is due again after this long should its sender die (longer than an attempt can take).
LEASE_S = 60.0
# How often a sender looks for due messages, and how many it takes at a time.
POLL_INTERVAL_S = 0.5
BATCH = 50
SENDER_THREADS = 4
USER_AGENT = "Squeezer-Webhooks/1.0"
# Metadata services that are not in a private or link-local range (AWS's IPv6 one is a unique-local address).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address) for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list]


class UrlRefused(ValueError):
    """A webhook URL the guard will not connect to; the message says why (an API 422, a delivery's error)."""


@dataclass(frozen=True)
class Target:
    """Where a checked URL is sent: `url` names the address the host resolved to; `host_header` and `tls_name` are
    the URL's own."""

    url: httpx.URL
    host_header: str
    tls_name: str
    address: Address


@dataclass(frozen=True)
class UrlPolicy:
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_http: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "UrlPolicy":
        hosts, networks = set(), []
        for entry in filter(None, (part.strip().lower() for part in settings.webhook_allowed_hosts.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks), settings.webhook_allow_http)

    def check_syntax(self, url: str) -> httpx.URL:
        """The URL parsed, or UrlRefused: an absolute https (or allowed http) URL with a host and no credentials."""
        if len(url) > MAX_URL_CHARS:
            raise UrlRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            raise UrlRefused(f"not a URL ({error})") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parsed.scheme not in schemes:
            raise UrlRefused(f"the URL must be {' or '.join(schemes)}")
        if not parsed.host:
            raise UrlRefused("the URL has no host")
        if parsed.userinfo:
            raise UrlRefused("the URL must not carry credentials")
        return parsed

    def is_allowed(self, host: str, address: Address) -> bool:
        if host in self.allowed_hosts or any(address in network for network in self.allowed_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_global and not address.is_multicast and address not in METADATA_ADDRESSES

    def pin(self, url: str, resolve: Resolver = socket.getaddrinfo) -> Target:
        """Resolves the URL's host once and checks every address it gives; the target is the first. UrlRefused
        before any connection is made."""
        parsed = self.check_syntax(url)
        host = parsed.host.lower().rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise UrlRefused(f"the host {host} does not resolve ({error})") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        if not addresses:
            raise UrlRefused(f"the host {host} does not resolve")
        refused = [address for address in addresses if not self.is_allowed(host, address)]
        if refused:
            raise UrlRefused(
                f"the host {host} resolves to {refused[0]}, a loopback, private, link-local, multicast or metadata "
                "address (allow it with SQUEEZER_WEBHOOK_ALLOWED_HOSTS)"
            )
        address = addresses[0]
        default_port = port == (443 if parsed.scheme == "https" else 80)
        return Target(
            url=parsed.copy_with(host=str(address), port=port),
            host_header=host if default_port else f"{host}:{port}",
            tls_name=host,
            address=address,
        )


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(msg_id: str, body: str, secrets: list[str], now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers; one signature per secret, space-separated (a rotation's grace period)."""
    signatures = " ".join(Webhook(secret).sign(msg_id, now, body) for secret in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }


def post(target: Target, body: str, headers: dict[str, str]) -> Answer:
    """One POST to the pinned address; the answer's status, and at most MAX_ANSWER_BYTES of its body read."""
    started = time.monotonic()
    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            with client.stream(
                "POST",
                target.url,
                content=body.encode(),
                headers={
                    **headers,
                    "Host": target.host_header,
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                },
                extensions={"sni_hostname": target.tls_name},
            ) as response:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= MAX_ANSWER_BYTES or time.monotonic() - started > TIMEOUT_S:
                        break
                status_code = response.status_code
    except httpx.TimeoutException:
        return Answer(None, "timeout", _ms_since(started))
    except httpx.HTTPError as error:
        return Answer(None, f"{type(error).__name__}: {error}"[:255], _ms_since(started))
    return Answer(status_code, None, _ms_since(started))


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def retry_at(settings: Settings, delivery: WebhookDelivery, now: datetime) -> datetime | None:
    """Exponential back-off with full jitter over the upper half: base · 2^(attempt−1), capped; None once the next
    attempt would fall past `webhook_retry_for_s` after the event."""
    delay = min(settings.webhook_retry_base_s * 2**delivery.attempts, settings.webhook_retry_max_delay_s)
    due = now + timedelta(seconds=delay * random.uniform(0.5, 1.0))
    created = as_utc(delivery.created_at) or now
    return due if due <= created + timedelta(seconds=settings.webhook_retry_for_s) else None


def attempt(delivery: WebhookDelivery, endpoint: WebhookEndpoint, policy: UrlPolicy) -> Answer:
    """Checks the endpoint's URL (resolved now, so a host that moved to a refused address is refused) and sends."""
    now = utcnow()
    try:
        target = policy.pin(endpoint.url)
    except UrlRefused as error:
        return Answer(None, f"refused: {error}"[:255], 0.0)
    headers = signed_headers(delivery.id, delivery.body, secrets_to_sign(endpoint, now), now)
    return post(target, delivery.body, headers)


def deliver(delivery_id: str, settings: Settings, session_factory: sessionmaker[Session]) -> None:
    """One attempt at a message taken by a sender (take_due_deliveries); nothing when it is no longer pending or
    its endpoint is gone."""
    with session_factory() as session:
        found = message_to_send(session, delivery_id)
        if found is None:
            return
        delivery, endpoint = found
        session.expunge_all()  # no connection held while the receiver answers
    answer = attempt(delivery, endpoint, UrlPolicy.from_settings(settings))
    next_retry = None if answer.ok else retry_at(settings, delivery, utcnow())
    with session_factory() as session:
        record_attempt(
            session,
            delivery,
            status_code=answer.status_code,
            error=answer.error,
            latency_ms=answer.latency_ms,
            succeeded=answer.ok,
            next_retry_at=next_retry,
        )
    WEBHOOK_DELIVERIES.labels("delivered" if answer.ok else "retry" if next_retry else "failed").inc()
    if not answer.ok:
        log.info("webhook %s attempt %d: %s", delivery_id, delivery.attempts + 1, answer.error or answer.status_code)


class WebhookSender(threading.Thread):
    """Looks for due messages every POLL_INTERVAL_S and hands each id to `send` (a thread pool in the embedded mode,
    the `webhooks` Celery queue in a webhooks worker). The outbox rows are the truth: a message whose hand-off is
    lost is due again after LEASE_S."""

    def __init__(self, session_factory: sessionmaker[Session], send: Callable[[str], None]):
        super().__init__(name="squeezer-webhook-sender", daemon=True)
        self.session_factory = session_factory
        self.send = send
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(POLL_INTERVAL_S):
            try:
                with self.session_factory() as session:
                    due = take_due_deliveries(session, lease_s=LEASE_S, limit=BATCH)
                for delivery_id in due:
                    self.send(delivery_id)
            except Exception:
                log.exception("webhook sender: looking for due messages failed; retrying")

    def stop(self) -> None:
        self._stop_event.set()


class InProcessWebhooks:
    """The embedded mode's webhook delivery: a sender thread and a few sending threads, so a receiver that hangs
    holds one of them for TIMEOUT_S at most and never the job thread."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]):
        self.settings = settings
        self.session_factory = session_factory
        self._pool: ThreadPoolExecutor | None = None
        self._sender: WebhookSender | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="squeezer-webhook")
        self._sender = WebhookSender(self.session_factory, self._submit)
        self._sender.start()

    def _submit(self, delivery_id: str) -> None:
        if self._pool is not None:
            self._pool.submit(self._deliver, delivery_id)

    def _deliver(self, delivery_id: str) -> None:
        try:
            deliver(delivery_id, self.settings, self.session_factory)
        except Exception:
            log.exception("webhook %s: delivery failed; it is due again later", delivery_id)

    def stop(self) -> None:
        if self._sender is not None:
            self._sender.stop()
            self._sender.join()
            self._sender = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
