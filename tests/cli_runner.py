"""Running the ``visionpipe`` CLI in a test: typer's runner pointed at the local host.

Use with ``pytestmark = pytest.mark.usefixtures("cli_env")`` (the fixtures ``cli_env`` and
``client`` are in tests/conftest.py), then :func:`invoke` / :func:`rows_of`.
"""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from visionpipe.client.cli import app

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    """The command's output (stdout and stderr); its exit status must be ``code``."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def rows_of(*args: str) -> Any:
    """A ``--json`` command's JSON (stdout only: notes go to stderr)."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)
