"""The `squeezer` console script. Engine commands and service commands live in their own modules."""

from typing import Annotated

import typer

from squeezer.cli import engine_commands, key_commands, service_commands
from squeezer.cli.output import CliState

app = typer.Typer(
    name="squeezer",
    help="Compress trained CNNs under an accuracy budget, locally or as a job service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    context: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback behind an error (on an internal error, too).")
    ] = False,
) -> None:
    """Compress trained CNNs under an accuracy budget, locally or as a job service."""
    context.obj = CliState(debug=debug)


engine_commands.register(app)
service_commands.register(app)
key_commands.register(app)
