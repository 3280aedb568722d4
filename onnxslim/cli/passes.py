"""`onnxslim passes`: every pass with its description and options."""

from __future__ import annotations

import typer
from rich.table import Table

from onnxslim.cli._app import app, out, print_json
from onnxslim.registry import available_passes, describe


@app.command("passes")
def passes_command(json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every pass with its one-line description and its options."""
    infos = [describe(name, cls) for name, cls in available_passes().items()]
    if json_output:
        print_json(
            [
                {
                    "name": i.name,
                    "summary": i.summary,
                    "lossless": i.lossless,
                    "options": [o.__dict__ for o in i.options],
                }
                for i in infos
            ]
        )
        return
    table = Table(title="passes", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("options")
    for info in infos:
        options = "\n".join(
            f"{o.name} ({o.type}, default {o.default!r}): {o.help}" for o in info.options
        )
        kind = "lossless" if info.lossless else "lossy"
        table.add_row(info.name, f"{info.summary} [{kind}]", options or "-")
    out.print(table)
