"""`python -m squeezer.worker`: a Celery job worker configured from SQUEEZER_* environment variables;
`python -m squeezer.worker webhooks`: a webhooks worker (worker.celery_app)."""

import sys

from squeezer.core.jail import JailUnavailable
from squeezer.worker.celery_app import start_worker

if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["webhooks"]):
        sys.exit("usage: python -m squeezer.worker [webhooks]")
    try:
        start_worker(webhooks=sys.argv[1:] == ["webhooks"])
    except JailUnavailable as error:
        sys.exit(f"squeezer worker: {error.message}")
