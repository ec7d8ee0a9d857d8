"""`python -m worker`: a Celery worker configured from SQUEEZER_* environment variables."""

import sys

from core.jail import JailUnavailable
from worker.celery_app import start_worker

if __name__ == "__main__":
    try:
        start_worker()
    except JailUnavailable as error:
        sys.exit(f"squeezer worker: {error.message}")
