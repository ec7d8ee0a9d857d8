"""Squeezer's engine: a plain library (no HTTP, no database, no Celery)."""
