"""The administrator's commands: ``migrate`` the schema, and the API ``keys`` group.

What whoever installs and upgrades the dispatcher, and hands out access to
it, uses. Key changes are audited under ``cli_actor()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from dispatcher.cli.common import cli_actor, emit_json, friendly_errors, require_schema

if TYPE_CHECKING:
    from dispatcher.service.keys import KeyStore


@click.command()
@friendly_errors
def migrate() -> None:
    """Create or upgrade the database schema to this version."""
    from dispatcher import runtime
    from dispatcher.persistence import migrate as migrations

    database = runtime.service().db
    migrations.upgrade(database)
    revision = migrations.current_revision(database)
    click.echo(f"database at revision {revision}: {database.display_url}")


@click.group()
def keys() -> None:
    """API keys for the HTTP API and the drop-in endpoint."""


def _key_store() -> KeyStore:
    from dispatcher import runtime
    from dispatcher.service.keys import KeyStore

    require_schema()
    return KeyStore(runtime.service().db)


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    default="send,read",
    show_default=True,
    help="Comma-separated: send, read, operate, balance.",
)
@click.option(
    "--senders",
    default=None,
    help="Comma-separated senders granted to this key; without: the default sender only.",
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_create(name: str, scopes: str, senders: str | None, as_json: bool) -> None:
    """Create a key; its token is printed once and never stored."""
    allowed = senders.split(",") if senders is not None else None
    token, info = _key_store().create(name, scopes, actor=cli_actor(), senders=allowed)
    if as_json:
        emit_json(info.as_dict() | {"token": token})
        return
    click.echo(f"key {info.name} ({', '.join(sorted(info.scopes))}) created.")
    if info.allowed_senders:
        click.echo(f"allowed senders: {', '.join(info.allowed_senders)}")
    click.echo("token (shown once, keep it secret):")
    click.echo(token)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_list(as_json: bool) -> None:
    """List keys (names and scopes; tokens are never stored)."""
    infos = _key_store().list()
    if as_json:
        emit_json([i.as_dict() for i in infos])
        return
    for info in infos:
        state = f"revoked {info.revoked_at}" if info.revoked_at else "active"
        senders = ",".join(info.allowed_senders) or "default-only"
        click.echo(
            f"{info.name:<24} {','.join(sorted(info.scopes)):<20} {state:<10} senders {senders}"
        )


@keys.command("update")
@click.argument("name")
@click.option("--scope", "scopes", default=None, help="Replace its scopes: send, read, operate.")
@click.option(
    "--grant-sender",
    "grant",
    multiple=True,
    help="A sender it may use from now on (repeat, or comma-separate).",
)
@click.option(
    "--revoke-sender", "revoke", multiple=True, help="A granted sender it may no longer use."
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_update(
    name: str, scopes: str | None, grant: Sequence[str], revoke: Sequence[str], as_json: bool
) -> None:
    """Rescope a key or grant and revoke its senders; audited, effective at once."""
    info = _key_store().update(
        name,
        actor=cli_actor(),
        scopes=scopes,
        grant=[s for item in grant for s in item.split(",")],
        revoke=[s for item in revoke for s in item.split(",")],
    )
    if as_json:
        emit_json(info.as_dict())
        return
    senders = ", ".join(info.allowed_senders) or "the default only"
    click.echo(f"key {info.name}: scopes {','.join(sorted(info.scopes))}; senders {senders}")


@keys.command("revoke")
@click.argument("name")
@friendly_errors
def keys_revoke(name: str) -> None:
    """Revoke a key at once."""
    info = _key_store().revoke(name, actor=cli_actor())
    click.echo(f"key {info.name} revoked at {info.revoked_at}")
