"""`onnxslim targets setup|list`: build and show the emulated CPU targets."""

from __future__ import annotations

import typer
from rich.table import Table

from onnxslim import targets
from onnxslim.cli._app import app, err, out, print_json

targets_app = typer.Typer(
    help="Emulated CPU targets for `validate --target` (QEMU user mode).", no_args_is_help=True
)
app.add_typer(targets_app, name="targets")


@targets_app.command("setup")
def setup_command(
    name: str = typer.Argument(
        ..., help=f"Target to build: {', '.join(targets.EMULATED_TARGETS)}."
    ),
) -> None:
    """Build a target once into the cache (downloads packages from PyPI and Debian)."""
    state = targets.setup(name, progress=lambda message: err.print(f"[dim]{name}:[/] {message}"))
    out.print(f"{state.name}: ready ({state.detail}) in {state.path}")


@targets_app.command("list")
def list_command(json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show which targets are ready."""
    states = [targets.status(name) for name in targets.EMULATED_TARGETS]
    if json_output:
        print_json(
            [
                {"name": s.name, "ready": s.ready, "detail": s.detail, "path": str(s.path)}
                for s in states
            ]
        )
        return
    table = Table(title=f"targets (cache {targets.cache_root()})")
    for column in ("target", "ready", "detail"):
        table.add_column(column)
    for s in states:
        table.add_row(s.name, "[green]yes[/]" if s.ready else "[red]no[/]", s.detail)
    out.print(table)
