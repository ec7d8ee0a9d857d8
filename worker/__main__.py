"""`python -m worker`: a Celery job worker configured from SQUEEZER_* environment variables; `python -m worker
webhooks`: a webhooks worker (worker.celery_app)."""

import sys

from core.jail import JailUnavailable
from worker.celery_app import start_worker

if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["webhooks"]):
        sys.exit("usage: python -m worker [webhooks]")
    try:
        start_worker(webhooks=sys.argv[1:] == ["webhooks"])
    except JailUnavailable as error:
        sys.exit(f"squeezer worker: {error.message}")
