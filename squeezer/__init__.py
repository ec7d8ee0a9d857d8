"""Squeezer: CNN compression under an accuracy budget, as a library (`compress`, `evaluate`, `load`) and as a job
service (`squeezer.api`, `squeezer.worker`)."""
