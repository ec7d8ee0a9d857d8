"""`python -m worker`: a Celery worker configured from SQUEEZER_* environment variables."""

from worker.celery_app import start_worker

if __name__ == "__main__":
    start_worker()
