"""The ``visionpipe`` command line.

Today it drives the local stack; the Custom Vision-style commands (upload, train, status, metrics,
publish, predict, export, quarantine) arrive with the HTTP API they are clients of.
"""

from __future__ import annotations

import typer

from visionpipe import __version__

app = typer.Typer(help="visionpipe: self-hosted Custom Vision replacement.", no_args_is_help=True)
local = typer.Typer(help="The local stack: Azurite, Functions host, Event Grid bridge, worker.",
                    no_args_is_help=True)
app.add_typer(local, name="local")


@app.command()
def version() -> None:
    """Print the visionpipe version."""
    typer.echo(__version__)


@local.command()
def up() -> None:
    """Start the local stack in the background; return once GET /health answers."""
    from visionpipe.local import stack

    stack.up()


@local.command()
def down() -> None:
    """Stop the local stack."""
    from visionpipe.local import stack

    stack.down()


@local.command()
def demo(project: str = "demo", timeout: float = 60.0) -> None:
    """Drop a generated sample set into the running stack and show what became of each file."""
    from visionpipe.local import demo as demo_module

    demo_module.main(["--project", project, "--timeout", str(timeout)])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
