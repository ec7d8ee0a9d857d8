"""The `squeezer` console script. Engine commands and service commands live in their own modules."""

import typer

from cli import engine_commands, key_commands, service_commands

app = typer.Typer(
    name="squeezer",
    help="Compress trained CNNs under an accuracy budget, locally or as a job service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
engine_commands.register(app)
service_commands.register(app)
key_commands.register(app)
