"""Service commands: serve, api, worker, submit, jobs, demo."""

import typer


def register(app: typer.Typer) -> None:
    """Adds the service commands to the `squeezer` app."""
