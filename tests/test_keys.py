"""API keys from Key Vault with rotation: the real auth path over real HTTP, with a Key Vault-shaped
``SecretClient`` at the SDK boundary (there is no local Key Vault emulator)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import TEST_TRAINING_KEY
from visionpipe import names
from visionpipe.api.vault_keys import MISS_REFRESH_SECONDS, VaultKeys
from visionpipe.client.cli import app

VAULT = "https://visionpipe-test.vault.azure.net/"
_versions = itertools.count(1)


@dataclass
class Properties:
    version: str
    created_on: datetime
    enabled: bool = True


@dataclass
class Secret:
    value: str
    properties: Properties


class FakeVault:
    """The secrets of one vault, as the Key Vault service keeps them (versions, enabled flags)."""

    def __init__(self) -> None:
        self.secrets: dict[str, list[Secret]] = {}
        self.down = False
        self.calls = 0

    def set(self, name: str, value: str, age: timedelta = timedelta(0)) -> Properties:
        props = Properties(f"v{next(_versions)}", datetime.now(UTC) - age)
        self.secrets.setdefault(name, []).append(Secret(value, props))
        return props

    def client_class(self) -> type:
        vault = self

        class SecretClient:  # the subset of azure.keyvault.secrets.SecretClient visionpipe uses
            def __init__(self, vault_url: str, credential: Any) -> None:
                assert vault_url == VAULT and credential is not None

            def _check(self) -> None:
                vault.calls += 1
                if vault.down:
                    raise ConnectionError("vault unreachable")

            def list_properties_of_secret_versions(self, name: str) -> Iterator[Properties]:
                self._check()
                return iter([s.properties for s in vault.secrets.get(name, [])])

            def set_secret(self, name: str, value: str, **_: Any) -> Secret:
                self._check()
                vault.set(name, value)
                return vault.secrets[name][-1]

            def get_secret(self, name: str, version: str | None = None) -> Secret:
                self._check()
                found = [s for s in vault.secrets[name]
                         if version is None or s.properties.version == version]
                return found[-1]

        return SecretClient


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch, app_setting: Callable[[str, str | None], None],
          storage: object) -> FakeVault:
    fake = FakeVault()
    import azure.keyvault.secrets

    monkeypatch.setattr(azure.keyvault.secrets, "SecretClient", fake.client_class())
    app_setting(names.SETTING_KEY_VAULT_URI, VAULT)
    app_setting(names.SETTING_KEY_CACHE_TTL_SECONDS, "0")  # every request reads the vault
    return fake


def status(local_host: str, training_key: str) -> int:
    return httpx.get(f"{local_host}/customvision/v3.3/training/projects",
                     headers={"Training-Key": training_key}, timeout=30).status_code


def predict_status(local_host: str, prediction_key: str) -> int:
    url = (f"{local_host}/customvision/v3.0/prediction/00000000-0000-0000-0000-000000000000/"
           "classify/iterations/none/image")
    return httpx.post(url, headers={"Prediction-Key": prediction_key}, content=b"x",
                      timeout=30).status_code


def test_without_key_vault_the_settings_keys_work(local_host: str) -> None:
    assert status(local_host, TEST_TRAINING_KEY) == 200
    assert status(local_host, "other") == 401


def test_keys_come_from_key_vault_and_rotate_with_a_grace_period(
        vault: FakeVault, local_host: str, app_setting: Callable[[str, str | None], None]
) -> None:
    vault.set(names.TRAINING_KEY_SECRET, "kv-train-1", age=timedelta(days=30))
    vault.set(names.PREDICTION_KEY_SECRET, "kv-predict-1", age=timedelta(days=30))
    assert status(local_host, "kv-train-1") == 200
    assert status(local_host, TEST_TRAINING_KEY) == 401  # the vault has the say once it answers
    assert predict_status(local_host, "kv-predict-1") != 401
    assert predict_status(local_host, "kv-train-1") == 401

    # Rotation: the new key works at once, the old one for the grace period.
    vault.set(names.TRAINING_KEY_SECRET, "kv-train-2")
    assert status(local_host, "kv-train-2") == 200
    assert status(local_host, "kv-train-1") == 200
    # Past the grace period the old key is refused.
    app_setting(names.SETTING_KEY_ROTATION_GRACE_SECONDS, "0")
    assert status(local_host, "kv-train-1") == 401
    assert status(local_host, "kv-train-2") == 200
    # Disabling a version revokes it.
    app_setting(names.SETTING_KEY_ROTATION_GRACE_SECONDS, None)
    vault.secrets[names.TRAINING_KEY_SECRET][0].properties.enabled = False
    assert status(local_host, "kv-train-1") == 401


def test_an_outage_keeps_the_last_keys_and_falls_back_to_the_settings(
        vault: FakeVault, local_host: str, app_setting: Callable[[str, str | None], None]
) -> None:
    vault.down = True  # never answered: the key the app settings resolved at start
    assert status(local_host, TEST_TRAINING_KEY) == 200
    vault.down = False
    vault.set(names.TRAINING_KEY_SECRET, "kv-only")
    assert status(local_host, "kv-only") == 200
    vault.down = True  # answered before: its keys stay in use
    assert status(local_host, "kv-only") == 200
    assert status(local_host, TEST_TRAINING_KEY) == 401


def test_the_cache_bounds_key_vault_calls() -> None:
    fake = FakeVault()
    fake.set("k", "one")
    now = [0.0]
    keys = VaultKeys(fake.client_class()(VAULT, object()), ttl=300, grace=3600,
                     clock=lambda: now[0])
    assert keys.accepted("k", "one") == ("one",)
    calls = fake.calls
    for _ in range(50):  # right keys and a flood of wrong ones within the interval
        assert keys.accepted("k", "one") == ("one",)
        assert keys.accepted("k", "wrong") == ("one",)
    assert fake.calls == calls
    fake.set("k", "two")
    now[0] += MISS_REFRESH_SECONDS  # a key nothing cached matches: one early refresh
    assert keys.accepted("k", "two") == ("two", "one")
    assert fake.calls == calls + 3  # the version list and the two values


def test_keys_rotate_writes_new_versions_the_app_then_accepts(
        vault: FakeVault, local_host: str) -> None:
    vault.set(names.TRAINING_KEY_SECRET, "before", age=timedelta(days=1))
    vault.set(names.PREDICTION_KEY_SECRET, "before-p", age=timedelta(days=1))
    result = CliRunner().invoke(app, ["keys", "rotate", "--vault-uri", VAULT, "--json",
                                      "--no-prediction"])
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    new = rotated[names.TRAINING_KEY_SECRET]["value"]
    assert set(rotated) == {names.TRAINING_KEY_SECRET} and len(new) == 32
    assert [s.value for s in vault.secrets[names.PREDICTION_KEY_SECRET]] == ["before-p"]
    assert status(local_host, new) == 200
    assert status(local_host, "before") == 200  # within the grace period
