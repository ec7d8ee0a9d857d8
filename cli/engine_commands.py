"""Engine commands: sample, compress, evaluate."""

import typer


def register(app: typer.Typer) -> None:
    """Adds the engine commands to the `squeezer` app."""
