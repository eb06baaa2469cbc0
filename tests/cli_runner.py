"""Running the ``visionpipe`` CLI in a test: typer's runner pointed at the local host.

Use with ``pytestmark = pytest.mark.usefixtures("cli_env")`` after ``from tests.cli_runner import
cli_env`` (or an autouse fixture that requests it), then :func:`invoke` / :func:`rows_of`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from visionpipe.client.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(local_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The local host and the test keys as the CLI's environment; a wide terminal, so tables
    do not wrap what the tests look for."""
    monkeypatch.setenv("VISIONPIPE_ENDPOINT", local_host)
    monkeypatch.setenv("VISIONPIPE_TRAINING_KEY", TEST_TRAINING_KEY)
    monkeypatch.setenv("VISIONPIPE_PREDICTION_KEY", TEST_PREDICTION_KEY)
    monkeypatch.setenv("COLUMNS", "200")
    return local_host


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
