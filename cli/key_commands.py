"""`squeezer keys create|list|revoke`: API keys, written straight to the service's database.

With --data-dir they go to the embedded service's SQLite database there (what `squeezer serve --data-dir` reads);
without it, to the database the SQUEEZER_* settings name (what `squeezer api` reads)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli.output import EXIT_BAD_INPUT, console, err_console, print_rows
from squeezer.cli.service_commands import embedded_settings, needs_service_extra

keys_app = typer.Typer(help="Create, list and revoke API keys (`Authorization: Bearer <key>`).", no_args_is_help=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The embedded service's data folder (as given to `squeezer serve`); default: SQUEEZER_* settings.",
    ),
]


@contextmanager
def _session(data_dir: Path | None) -> Iterator:
    """A session on the configured database, migrated first (the embedded database may not exist yet)."""
    from squeezer.store.db import make_engine, make_session_factory
    from squeezer.store.migrate import upgrade_database
    from squeezer.store.settings import get_settings

    url = (embedded_settings(data_dir) if data_dir is not None else get_settings()).resolved_database_url
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option("--name", help="A label to tell keys apart.")] = "",
    data_dir: DataDirOption = None,
) -> None:
    """Create a key. It is printed once, as the last line; only its hash is stored."""
    from squeezer.store.keys import create_key

    with _session(data_dir) as session:
        try:
            row, key = create_key(session, tenant, name)
        except ValueError as error:
            err_console.print(str(error), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(
        f"created key {row.id} for tenant {row.tenant}; store it now, it is not shown again:",
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(key)


def list_(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Keys with their prefix, creation, last use and revocation (never the key itself)."""
    from squeezer.store.keys import list_keys

    with _session(data_dir) as session:
        rows = list_keys(session, tenant)
    print_rows(
        ["id", "tenant", "name", "prefix", "created", "last used", "revoked"],
        [
            [
                row.id,
                row.tenant,
                row.name,
                row.prefix + "…",
                *(
                    moment.isoformat(timespec="seconds") if moment else ""
                    for moment in (row.created_at, row.last_used_at, row.revoked_at)
                ),
            ]
            for row in rows
        ],
    )


def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…), as `squeezer keys list` shows it.")],
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant that owns the key.")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    from squeezer.store.keys import revoke_key

    with _session(data_dir) as session:
        revoked = revoke_key(session, key_id, tenant)
    if not revoked:
        err_console.print(f"tenant {tenant} has no unrevoked key {key_id}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    console.print(f"revoked key {key_id} of tenant {tenant}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Adds `squeezer keys create|list|revoke`; each needs the service extra (it opens the service's database)."""
    for name, command in (("create", create), ("list", list_), ("revoke", revoke)):
        keys_app.command(name)(needs_service_extra(command, f"keys {name}"))
    app.add_typer(keys_app, name="keys")
