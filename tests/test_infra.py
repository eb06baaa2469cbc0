"""Offline checks of the infrastructure as code (infra/, azure.yaml, scripts/).

There is no Bicep CLI here, so the Bicep is checked the ways that work offline:

* every ``.bicep`` file parses with pycep-parser, and ``checkov --framework bicep`` reports zero
  failed checks (every skip carries its reason inline, next to the resource);
* the contract with the code: container, queue, table, function and setting names in the Bicep are
  the ones in :mod:`visionpipe.names` (the Bicep loads them from ``infra/names.json``, the mirror
  that ``scripts/sync_infra_names.py`` writes), and the training image's entry point is the job's
  command;
* the conventions of the Azure Verified Modules conventions and the security defaults of
ARCHITECTURE.md, "Cloud".

What only a real deployment can show is listed in the README ("Deploy to Azure", "What the
offline checks cannot see").
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from visionpipe import names
from visionpipe.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"
NAMES_JSON = INFRA / "names.json"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
DOCKERFILE = ROOT / "training_job" / "Dockerfile"

Json = dict[str, Any]

# Resource types and the API versions the Bicep may use: versions that exist (checked against the
# Azure REST API specs when written). A new resource type or version is added here on purpose.
KNOWN_API_VERSIONS: dict[str, set[str]] = {
    "Microsoft.Resources/resourceGroups": {"2024-03-01"},
    "Microsoft.ManagedIdentity/userAssignedIdentities": {"2023-01-31"},
    "Microsoft.OperationalInsights/workspaces": {"2023-09-01"},
    "Microsoft.Insights/components": {"2020-02-02"},
    "Microsoft.Insights/diagnosticSettings": {"2021-05-01-preview"},
    "Microsoft.Storage/storageAccounts": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/blobServices": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/blobServices/containers": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/managementPolicies": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/queueServices": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/queueServices/queues": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/tableServices": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/tableServices/tables": {"2023-05-01"},
    "Microsoft.KeyVault/vaults": {"2023-07-01"},
    "Microsoft.KeyVault/vaults/secrets": {"2023-07-01"},
    "Microsoft.ContainerRegistry/registries": {"2023-07-01"},
    "Microsoft.EventGrid/systemTopics": {"2022-06-15"},
    "Microsoft.EventGrid/topics": {"2022-06-15"},
    "Microsoft.EventGrid/systemTopics/eventSubscriptions": {"2022-06-15"},
    "Microsoft.Authorization/roleAssignments": {"2022-04-01"},
    "Microsoft.Web/serverfarms": {"2024-04-01"},
    "Microsoft.Web/sites": {"2024-04-01"},
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": {"2024-04-01"},
    # 2025-01-01 is the first stable version with managed identity on a job's scale rule.
    "Microsoft.App/managedEnvironments": {"2025-01-01"},
    "Microsoft.App/jobs": {"2025-01-01"},
}

# Built-in role definition ids (Azure docs, "Azure built-in roles").
ROLE_IDS: dict[str, str] = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
    "acrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
# Control-plane roles a workload must never get.
BROAD_ROLE_IDS = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",  # Owner
    "b24988ac-6180-42a0-ab88-20f7382dd24c",  # Contributor
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",  # User Access Administrator
}

# The Key Vault secret names of ARCHITECTURE.md, "HTTP API" (visionpipe.names may grow constants
# for them).
TRAINING_KEY_SECRET = getattr(names, "TRAINING_KEY_SECRET", "training-key")
PREDICTION_KEY_SECRET = getattr(names, "PREDICTION_KEY_SECRET", "prediction-key")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_sync_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sync_infra_names", ROOT / "scripts" / "sync_infra_names.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Resolver:
    """Evaluates the small part of Bicep the contract needs, on pycep's parse of one file.

    pycep hands back literals without their quotes and references as their source text, so a
    value is resolved as: ``names.X`` -> infra/names.json, a variable of the file -> its value,
    ``${...}`` -> each part resolved; anything else (a literal, a parameter) stays as it is.
    """

    def __init__(self, parsed: Json, names_json: Json) -> None:
        self.variables = {k: v["value"] for k, v in parsed.get("variables", {}).items()}
        self.names_json = names_json

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, dict) and "function" not in value and "operator" not in value:
            return {key: self(item) for key, item in value.items()}
        if not isinstance(value, str):
            return value
        text = value.strip()
        match = re.fullmatch(r"names\.([A-Z][A-Z0-9_]*)", text)
        if match:
            return self.names_json[match.group(1)]
        if text in self.variables and self.variables[text] is not None:
            return self(self.variables[text])
        if "${" in text:
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self(m.group(1))), text)
        return text


def resources_of_type(parsed: Json, resource_type: str) -> dict[str, Json]:
    return {
        name: res
        for name, res in parsed.get("resources", {}).items()
        if res["type"] == resource_type
    }


def body(resource: Json) -> Json:
    """The resource body, inside a loop or a condition when there is one."""
    config = resource["config"]
    return config["config"] if "loop_type" in config or "condition" in config else config


def decorator_types(declaration: Json) -> list[str]:
    return [d["type"] for d in declaration.get("decorators", [])]


def allowed_values(declaration: Json) -> list[Any]:
    for decorator in declaration.get("decorators", []):
        if decorator["type"] == "allowed":
            return list(decorator["argument"])
    return []


def dockerfile_instruction(text: str, instruction: str) -> list[str] | None:
    """The last ENTRYPOINT or CMD of a Dockerfile as an argument list (exec or shell form)."""
    joined = re.sub(r"\\\n", " ", text)
    found: list[str] | None = None
    for line in joined.splitlines():
        match = re.match(rf"\s*{instruction}\s+(.*)$", line, flags=re.IGNORECASE)
        if not match:
            continue
        argument = match.group(1).strip()
        if argument.startswith("["):
            found = [str(part) for part in json.loads(argument)]
        else:
            found = shlex.split(argument)
    return found


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def names_json() -> Json:
    return json.loads(NAMES_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Json]:
    parser = BicepParser()
    return {rel(path): parser.parse(file_path=path) for path in BICEP_FILES}


@pytest.fixture(scope="module")
def main(parsed: dict[str, Json]) -> Json:
    return parsed["infra/main.bicep"]


def module_file(parsed: dict[str, Json], name: str) -> Json:
    return parsed[f"infra/modules/{name}.bicep"]


# checkov 3.1.47 (pinned) checks ``ftpsState`` (CKV_AZURE_78, "Ensure FTP deployments are
# disabled") in Terraform only; newer releases check ``siteConfig.ftpsState`` of Microsoft.Web/sites
# in ARM and Bicep too, and Flex Consumption sites must not set it (ARM error 51021). The site's
# inline skip is for that check; the report runs it with this equivalent when the installed
# checkov lacks it, so the skip is exercised, and not stale, with either version.
FTPS_CHECK_ID = "CKV_AZURE_78"
FTPS_CHECK = '''
from typing import Any

from checkov.bicep.checks.resource.base_resource_value_check import BaseResourceValueCheck
from checkov.common.models.enums import CheckCategories


class SiteFtpsStateDisabled(BaseResourceValueCheck):
    def __init__(self) -> None:
        super().__init__(name="Ensure FTP deployments are disabled", id="CKV_AZURE_78",
                         categories=(CheckCategories.APPLICATION_SECURITY,),
                         supported_resources=("Microsoft.Web/sites",))

    def get_inspected_key(self) -> str:
        return "properties/siteConfig/ftpsState"

    def get_expected_value(self) -> Any:
        return "Disabled"


check = SiteFtpsStateDisabled()
'''


def checkov_has_check(check_id: str) -> bool:
    """Whether the installed checkov runs ``check_id`` on ARM/Bicep resources by itself."""
    import checkov.arm.checks.resource  # noqa: F401 - registers the ARM checks
    import checkov.bicep.checks.resource.azure  # noqa: F401 - and the Bicep ones
    from checkov.arm.registry import arm_resource_registry
    from checkov.bicep.checks.resource.registry import registry as bicep_registry

    return any(check.id == check_id
               for registry in (arm_resource_registry, bicep_registry)
               for checks in registry.checks.values() for check in checks)


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> Json:
    """One checkov run over infra/ (it takes seconds; every checkov test shares it)."""
    exe = shutil.which("checkov", path=f"{Path(sys.executable).parent}{os.pathsep}"
                       f"{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.fail("checkov is not installed (pip install checkov): the Bicep must pass it")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    extra: list[str] = []
    if not checkov_has_check(FTPS_CHECK_ID):
        checks = tmp_path_factory.mktemp("checkov_checks")
        (checks / "__init__.py").write_text("")
        (checks / "site_ftps_state.py").write_text(FTPS_CHECK)
        extra = ["--external-checks-dir", str(checks)]
    proc = subprocess.run(
        [exe, "-d", str(INFRA), "--framework", "bicep", "--output", "json", *extra],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON report (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    if isinstance(report, list):  # one report per framework
        report = next(r for r in report if r.get("check_type") == "bicep")
    return report


# ------------------------------------------------------------------------------------------------
# Parsing and checkov
# ------------------------------------------------------------------------------------------------


def test_the_whole_pipeline_is_in_bicep() -> None:
    expected = {
        "main", "identity", "monitoring", "storage", "keyvault", "registry", "eventgrid",
        "event-subscriptions", "rbac", "functionapp", "containerapps",
    }
    found = {p.stem for p in BICEP_FILES}
    assert expected <= found, f"missing Bicep files: {sorted(expected - found)}"


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_bicep_file_parses(path: Path) -> None:
    result = BicepParser().parse(file_path=path)
    assert result.get("resources") or result.get("modules"), f"{rel(path)} declares nothing"


def test_checkov_reports_no_failed_check(checkov_report: Json) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["passed"] > 0
    assert summary["parsing_errors"] == 0


def test_every_checkov_skip_is_inline_and_justified(checkov_report: Json) -> None:
    skipped = checkov_report["results"]["skipped_checks"]
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{check['check_id']} skipped without a real reason"
    reported = {(c["check_id"], c["file_path"].lstrip("/")) for c in skipped}
    inline: set[tuple[str, str]] = set()
    for path in BICEP_FILES:
        for match in re.finditer(r"checkov:skip=([A-Z0-9_]+):(.*)", path.read_text()):
            assert match.group(2).strip(), f"{rel(path)}: skip {match.group(1)} has no reason"
            inline.add((match.group(1), str(path.relative_to(INFRA))))
    # A skip that no longer suppresses anything is stale: remove it.
    assert inline == reported


# ------------------------------------------------------------------------------------------------
# One source of truth for names
# ------------------------------------------------------------------------------------------------


def test_names_json_mirrors_visionpipe_names(names_json: Json) -> None:
    expected = load_sync_script().names_mirror()
    assert names_json == expected, (
        "infra/names.json is stale: run `python scripts/sync_infra_names.py`"
    )


def test_modules_load_names_from_names_json(parsed: dict[str, Json]) -> None:
    for path, tree in parsed.items():
        text = (ROOT / path).read_text()
        if "names." not in re.sub(r"//.*", "", text):
            continue
        declaration = tree["variables"].get("names")
        assert declaration is not None, f"{path} uses names.* without loading names.json"
        function = declaration["value"]["function"]
        assert function["type"] == "load_json_content"
        target = ((ROOT / path).parent / function["parameters"]["file_path"]).resolve()
        assert target == NAMES_JSON, f"{path} loads {target}, not infra/names.json"


def contract_names() -> set[str]:
    """Every name of visionpipe.names that the Bicep must take from names.json, not retype."""
    values: set[str] = set()
    for key, value in vars(names).items():
        if not key.isupper() or key in {"POISON_SUFFIX", "TRAINING_JOB_MODULE"}:
            continue
        if isinstance(value, str):
            values.add(value)
        elif isinstance(value, tuple):
            values.update(value)
        elif isinstance(value, dict):
            values.update(value)
            values.update(value.values())
    return values


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_no_contract_name_is_retyped_in_bicep(path: Path) -> None:
    code = re.sub(r"//.*", "", path.read_text())
    literals = set(re.findall(r"'((?:[^'\\]|\\.)*)'", code))
    retyped = sorted(literals & contract_names())
    assert not retyped, f"{rel(path)} spells {retyped}; use names.<CONSTANT> from names.json"


def test_storage_creates_every_container_queue_and_table(
    parsed: dict[str, Json], names_json: Json
) -> None:
    storage = module_file(parsed, "storage")
    resolve = Resolver(storage, names_json)

    def looped(resource_type: str) -> list[str]:
        loops = [
            res["config"]["loop_type"]["detail"]["array_name"]
            for res in resources_of_type(storage, resource_type).values()
            if "loop_type" in res["config"]
        ]
        assert len(loops) == 1, f"one loop over names.json expected for {resource_type}"
        return list(resolve(loops[0]))

    containers = looped("Microsoft.Storage/storageAccounts/blobServices/containers")
    queues = looped("Microsoft.Storage/storageAccounts/queueServices/queues")
    tables = looped("Microsoft.Storage/storageAccounts/tableServices/tables")
    assert containers == list(names.CONTAINERS)
    assert queues == list(names.QUEUES)
    assert tables == list(names.TABLES)
    for queue in (names.TRAINING_REQUESTS, names.TRAINING_EVENTS):
        assert queue + names.POISON_SUFFIX in queues, f"no poison queue for {queue}"
    assert set(names.DROP_CONTAINERS) <= set(containers)
    assert names.DEADLETTER in containers


def app_settings(parsed: dict[str, Json], names_json: Json) -> dict[str, Any]:
    functionapp = module_file(parsed, "functionapp")
    resolve = Resolver(functionapp, names_json)
    settings = resolve(functionapp["variables"]["appSettings"]["value"])
    site = body(resources_of_type(functionapp, "Microsoft.Web/sites")["functionApp"])
    assert site["properties"]["siteConfig"]["appSettings"] == "appSettings"
    result = {item["name"]: item["value"] for item in settings}
    assert len(result) == len(settings), "an app setting is set twice"
    return result


def test_function_app_sets_every_setting_the_code_reads(
    parsed: dict[str, Json], names_json: Json
) -> None:
    settings = app_settings(parsed, names_json)
    missing = set(names.APP_SETTINGS) - set(settings)
    assert not missing, f"app settings missing from the Function app: {sorted(missing)}"
    assert settings[names.SETTING_TRAINING_REQUESTS_QUEUE] == names.TRAINING_REQUESTS
    assert settings[names.SETTING_TRAINING_EVENTS_QUEUE] == names.TRAINING_EVENTS
    assert settings[names.SETTING_KEY_VAULT_URI] == "keyVaultUri"


def test_storage_connections_are_identity_based(
    parsed: dict[str, Json], names_json: Json
) -> None:
    settings = app_settings(parsed, names_json)
    for prefix in ("AzureWebJobsStorage", names.STORAGE_CONNECTION):
        assert settings[f"{prefix}__accountName"] == "storage.name"
        assert settings[f"{prefix}__credential"] == "managedidentity"
        assert settings[f"{prefix}__clientId"] == "identityClientId"
        assert prefix not in settings, f"{prefix} must not be a connection string in Azure"
    for service in ("blob", "queue", "table"):
        uri = settings[f"{names.STORAGE_CONNECTION}__{service}ServiceUri"]
        assert uri == f"storage.properties.primaryEndpoints.{service}"
    text = " ".join(v for v in settings.values() if isinstance(v, str)).lower()
    assert "accountkey" not in text and "listkeys" not in text
    # Flex Consumption sets the runtime in functionAppConfig and rejects these settings.
    for forbidden in ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION",
                      "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING"):
        assert forbidden not in settings


def test_api_keys_are_key_vault_references(parsed: dict[str, Json], names_json: Json) -> None:
    settings = app_settings(parsed, names_json)
    assert settings[names.SETTING_TRAINING_KEY] == (
        "@Microsoft.KeyVault(SecretUri=trainingKeyUri)"
    )
    assert settings[names.SETTING_PREDICTION_KEY] == (
        "@Microsoft.KeyVault(SecretUri=predictionKeyUri)"
    )
    keyvault = module_file(parsed, "keyvault")
    resolve = Resolver(keyvault, names_json)
    secrets = resources_of_type(keyvault, "Microsoft.KeyVault/vaults/secrets")
    secret_names = {key: resolve(body(res)["name"]) for key, res in secrets.items()}
    assert secret_names == {
        "trainingKeySecret": TRAINING_KEY_SECRET,
        "predictionKeySecret": PREDICTION_KEY_SECRET,
    }
    outputs = {k: v["value"] for k, v in keyvault["outputs"].items()}
    assert outputs["trainingKeyUri"] == "trainingKeySecret.properties.secretUri"
    assert outputs["predictionKeyUri"] == "predictionKeySecret.properties.secretUri"
    main_params = main_module_params(parsed, "functionApp")
    assert main_params["trainingKeyUri"] == "keyVault.outputs.trainingKeyUri"
    assert main_params["predictionKeyUri"] == "keyVault.outputs.predictionKeyUri"
    site = body(resources_of_type(module_file(parsed, "functionapp"), "Microsoft.Web/sites")
                ["functionApp"])
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"


def main_module_params(parsed: dict[str, Json], module: str) -> Json:
    declaration = parsed["infra/main.bicep"]["modules"][module]["config"]
    inner = declaration.get("config", declaration) if "condition" in declaration else declaration
    return dict(inner["params"])


def test_setting_defaults_match_the_code(main: Json) -> None:
    code = Settings.from_env({names.STORAGE_CONNECTION: "UseDevelopmentStorage=true"})
    defaults = {name: decl.get("default") for name, decl in main["parameters"].items()}
    assert defaults["autoCreateProjects"] is code.auto_create_projects
    assert defaults["upscaleSmallImages"] is code.training_limits.upscale_small
    assert defaults["maxTrainingImageBytes"] == code.training_limits.max_bytes
    assert defaults["maxPredictionImageBytes"] == code.prediction_limits.max_bytes
    assert defaults["minImageSide"] == code.training_limits.min_side
    assert defaults["maxImagePixels"] == code.training_limits.max_pixels
    passed = main["modules"]["functionApp"]["config"]["params"]
    for param in ("autoCreateProjects", "upscaleSmallImages", "maxTrainingImageBytes",
                  "maxPredictionImageBytes", "minImageSide", "maxImagePixels"):
        assert passed[param] == param, f"main.bicep does not pass {param} to the Function app"


def test_event_subscriptions_follow_names(parsed: dict[str, Json], names_json: Json) -> None:
    module = module_file(parsed, "event-subscriptions")
    resolve = Resolver(module, names_json)
    (resource,) = resources_of_type(
        module, "Microsoft.EventGrid/systemTopics/eventSubscriptions"
    ).values()
    loop = resource["config"]["loop_type"]
    assert loop["type"] == "object"
    assert resolve(loop["detail"]["object_name"]) == names.EVENT_SUBSCRIPTIONS
    item = loop["detail"]["item_name"]
    props = resolve(body(resource)["properties"])

    destination = props["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"].endswith(f"/functions/{item}.value")
    assert destination["properties"]["maxEventsPerBatch"] == 1

    event_filter = props["filter"]
    assert event_filter["includedEventTypes"] == [names.BLOB_CREATED]
    assert event_filter["subjectBeginsWith"] == (
        f"/blobServices/default/containers/{item}.key/blobs/"
    )
    assert event_filter["advancedFilters"] == [
        {"operatorType": "StringIn", "key": "data.api", "values": list(names.BLOB_CREATED_APIS)}
    ]
    assert props["eventDeliverySchema"] == "EventGridSchema"
    assert props["retryPolicy"] == {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
    dead_letter = props["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    assert dead_letter["deadLetterDestination"]["properties"]["blobContainerName"] == (
        names.DEADLETTER
    )

    # Every subscription targets a drop container and one of the app's Event Grid functions.
    assert set(names.EVENT_SUBSCRIPTIONS) == set(names.DROP_CONTAINERS)
    assert set(names.EVENT_SUBSCRIPTIONS.values()) <= {
        names.INGEST_FUNCTION, names.PREDICT_FUNCTION
    }


def test_event_subscriptions_are_a_second_phase(main: Json) -> None:
    declaration = main["modules"]["eventSubscriptions"]
    assert declaration["detail"]["path"] == "modules/event-subscriptions.bicep"
    assert declaration["config"]["condition"] == "deployEventSubscriptions"
    assert main["parameters"]["deployEventSubscriptions"]["default"] is False
    params = declaration["config"]["config"]["params"]
    assert params["functionAppName"] == "functionApp.outputs.name"
    # The postdeploy hook deploys the same module with the same parameters.
    script = (ROOT / "scripts" / "deploy_event_subscriptions.sh").read_text()
    assert "--template-file infra/modules/event-subscriptions.bicep" in script
    for param in params:
        assert f"{param}=" in script, f"deploy_event_subscriptions.sh does not pass {param}"


def test_training_job_contract(parsed: dict[str, Json], names_json: Json) -> None:
    module = module_file(parsed, "containerapps")
    resolve = Resolver(module, names_json)
    job = body(resources_of_type(module, "Microsoft.App/jobs")["trainingJob"])
    config = job["properties"]["configuration"]
    assert config["triggerType"] == "Event"
    assert config["replicaTimeout"] == "replicaTimeout"
    assert config["replicaRetryLimit"] == "replicaRetryLimit"
    assert config["registries"] == [{"server": "registryLoginServer", "identity": "identityId"}]
    (rule,) = resolve(config["eventTriggerConfig"]["scale"]["rules"])
    assert rule["type"] == "azure-queue"
    assert rule["metadata"]["queueName"] == names.TRAINING_REQUESTS
    assert rule["metadata"]["accountName"] == "storage.name"
    assert rule["metadata"]["queueLength"] == "1"
    assert rule["identity"] == "identityId", "the scale rule must use the managed identity"
    assert "auth" not in rule, "no connection-string secret for the scale rule"
    assert config["eventTriggerConfig"]["scale"]["minExecutions"] == 0

    (container,) = resolve(job["properties"]["template"]["containers"])
    assert container["command"] == ["python", "-m", names.TRAINING_JOB_MODULE]
    assert container["args"] == ["--once"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env[f"{names.STORAGE_CONNECTION}__accountName"] == "storage.name"
    assert env[f"{names.STORAGE_CONNECTION}__credential"] == "managedidentity"
    assert env[f"{names.STORAGE_CONNECTION}__clientId"] == "identityClientId"
    assert env[names.SETTING_TRAINING_REQUESTS_QUEUE] == names.TRAINING_REQUESTS
    assert env[names.SETTING_TRAINING_EVENTS_QUEUE] == names.TRAINING_EVENTS
    assert env["AZURE_CLIENT_ID"] == "identityClientId"

    passed = main_module_params(parsed, "containerApps")
    assert passed["replicaTimeout"] == "trainingTimeoutSeconds"
    assert passed["replicaRetryLimit"] == "trainingRetryLimit"
    assert passed["gpu"] == "gpu"


def test_training_job_rides_out_storage_blips(parsed: dict[str, Json], names_json: Json) -> None:
    """The app gives up on storage within seconds (a prompt 503); the job, which answers no
    request and would otherwise retrain from the start, is given more patience."""
    module = module_file(parsed, "containerapps")
    job = body(resources_of_type(module, "Microsoft.App/jobs")["trainingJob"])
    (container,) = Resolver(module, names_json)(job["properties"]["template"]["containers"])
    env = {item["name"]: item["value"] for item in container["env"]}
    base = {names.STORAGE_CONNECTION: "UseDevelopmentStorage=true"}
    app = Settings.from_env(base).storage
    tuned = {k: v for k, v in env.items() if k.startswith("STORAGE_")}
    assert tuned, "the job sets no storage retry settings"
    job_storage = Settings.from_env({**base, **tuned}).storage

    def patience(s: Any) -> float:
        return s.retry_total * s.retry_backoff_seconds

    assert patience(job_storage) >= 20 > patience(app)


def test_gpu_workload_profiles(parsed: dict[str, Json], main: Json) -> None:
    module = module_file(parsed, "containerapps")
    assert allowed_values(main["parameters"]["gpu"]) == ["T4", "A100", "none"]
    assert allowed_values(module["parameters"]["gpu"]) == ["T4", "A100", "none"]
    profiles = module["variables"]["profiles"]["value"]
    assert profiles["T4"]["workloadProfileType"] == "Consumption-GPU-NC8as-T4"
    assert profiles["A100"]["workloadProfileType"] == "Consumption-GPU-NC24-A100"
    assert profiles["none"]["workloadProfileType"] == "Consumption"
    job = body(resources_of_type(module, "Microsoft.App/jobs")["trainingJob"])
    assert job["properties"]["workloadProfileName"] == "workloadProfileName"


def test_training_dockerfile_entry_point_matches_the_job(
    parsed: dict[str, Json], names_json: Json
) -> None:
    if not DOCKERFILE.exists():
        pytest.skip("training_job/Dockerfile does not exist yet (written in another issue)")
    text = DOCKERFILE.read_text()
    entrypoint = dockerfile_instruction(text, "ENTRYPOINT")
    cmd = dockerfile_instruction(text, "CMD") or []
    effective = (entrypoint or []) + cmd if entrypoint else cmd
    expected = ["python", "-m", names.TRAINING_JOB_MODULE]
    assert effective[:3] == expected, (
        f"training_job/Dockerfile runs {effective}, the job runs {expected} --once"
    )
    module = module_file(parsed, "containerapps")
    job = body(resources_of_type(module, "Microsoft.App/jobs")["trainingJob"])
    (container,) = Resolver(module, names_json)(job["properties"]["template"]["containers"])
    assert container["command"] == effective[:3]


# ------------------------------------------------------------------------------------------------
# Conventions (the Azure Verified Modules conventions) and secure defaults (ARCHITECTURE.md,
# "Cloud")
# ------------------------------------------------------------------------------------------------


def test_every_parameter_has_a_description(parsed: dict[str, Json]) -> None:
    missing = [
        f"{path}: {name}"
        for path, tree in parsed.items()
        for name, declaration in tree.get("parameters", {}).items()
        if "description" not in decorator_types(declaration)
    ]
    assert not missing, "parameters without @description:\n" + "\n".join(missing)


def test_main_outputs_are_upper_snake(main: Json) -> None:
    outputs = list(main["outputs"])
    assert outputs
    bad = [name for name in outputs if not re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", name)]
    assert not bad, f"outputs not in UPPER_SNAKE: {bad}"
    for needed in ("AZURE_LOCATION", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME",
                   "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_CONTAINER_REGISTRY_NAME",
                   "TRAINING_JOB_NAME", "TRAINING_IMAGE_REPOSITORY",
                   "EVENT_GRID_SYSTEM_TOPIC_NAME"):
        assert needed in outputs, f"scripts/ need the output {needed}"
    assert not any("KEY" in name and "VAULT" not in name for name in outputs), "no key output"


def test_names_come_from_abbreviations_and_a_unique_token(main: Json) -> None:
    assert main["globals"]["scope"]["value"] == "subscription"
    abbrs_decl = main["variables"]["abbrs"]["value"]["function"]
    assert abbrs_decl["parameters"]["file_path"] == "abbreviations.json"
    token = main["variables"]["resourceToken"]["value"]["function"]
    unique = token["parameters"]["string_to_change"]["function"]
    assert unique["type"] == "unique_string"
    assert unique["parameters"]["base_string"]["function"]["type"] == "subscription"
    assert unique["parameters"]["extra_string_1"] == "environmentName"
    assert unique["parameters"]["extra_string_2"] == "location"
    abbreviations = json.loads((INFRA / "abbreviations.json").read_text())
    used = set(re.findall(r"abbrs\.(\w+)", (INFRA / "main.bicep").read_text()))
    assert used <= set(abbreviations), f"unknown abbreviations: {sorted(used - set(abbreviations))}"
    assert main["variables"]["tags"]["value"]["'azd-env-name'"] == "environmentName"


def test_api_versions_exist(parsed: dict[str, Json]) -> None:
    for path, tree in parsed.items():
        for name, resource in tree.get("resources", {}).items():
            known = KNOWN_API_VERSIONS.get(resource["type"])
            assert known is not None, f"{path}: {name}: add {resource['type']} to the known list"
            assert resource["api_version"] in known, (
                f"{path}: {name}: {resource['type']}@{resource['api_version']}"
            )


def iter_role_assignments(parsed: dict[str, Json]) -> Iterator[tuple[str, str, Json, Json]]:
    for path, tree in parsed.items():
        for name, res in resources_of_type(tree, "Microsoft.Authorization/roleAssignments").items():
            yield path, name, res, body(res)


def test_role_assignments_are_named_guid_scope_principal_role(parsed: dict[str, Json]) -> None:
    assignments = list(iter_role_assignments(parsed))
    assert len(assignments) >= 5
    for path, name, _res, assignment in assignments:
        guid = assignment["name"]["function"]
        assert guid["type"] == "guid", f"{path}: {name} is not named with guid()"
        args = guid["parameters"]
        assert args["base_string"] == f"{assignment['scope']}.id", f"{path}: {name}: scope"
        assert args["extra_string_1"] == assignment["properties"]["principalId"]
        assert args["extra_string_2"] == assignment["properties"]["roleDefinitionId"]
        assert assignment["properties"]["principalType"], f"{path}: {name}: principalType"


def test_role_assignments_are_least_privilege(parsed: dict[str, Json]) -> None:
    rbac = module_file(parsed, "rbac")
    roles = rbac["variables"]["roles"]["value"]
    assert roles == ROLE_IDS
    text = "\n".join(path.read_text() for path in BICEP_FILES)
    assert not BROAD_ROLE_IDS & set(re.findall(r"[0-9a-f-]{36}", text))

    # (principal, role) pairs, loops unrolled; user grants (optional) are left out.
    variables = rbac["variables"]
    workloads = variables["workloadPrincipalIds"]["value"]
    pairs = {
        (item["principalId"], item["role"].removeprefix("roles."))
        for item in variables["workloadStorageAssignments"]["value"]
    }
    for _path, name, res, assignment in iter_role_assignments({"rbac": rbac}):
        role_id = assignment["properties"]["roleDefinitionId"]["function"]["parameters"]
        role = role_id["resource_name_1"].removeprefix("roles.")
        loop = res["config"].get("loop_type")
        if loop is None:
            pairs.add((assignment["properties"]["principalId"], role))
        elif loop["detail"]["array_name"] in {"workloadPrincipalIds", "keyVaultReaders"}:
            pairs.update((principal, role) for principal in workloads)
        else:
            assert loop["detail"]["array_name"] == "storageAssignments", name

    def granted(principal: str) -> set[str]:
        return {role for who, role in pairs if who == principal}

    assert granted("functionPrincipalId") == {
        "storageBlobDataOwner", "storageQueueDataContributor", "storageTableDataContributor",
        "keyVaultSecretsUser", "monitoringMetricsPublisher",
    }
    assert granted("jobPrincipalId") == {
        "storageBlobDataContributor", "storageQueueDataContributor",
        "storageTableDataContributor", "keyVaultSecretsUser", "acrPull",
        "monitoringMetricsPublisher",
    }
    assert granted("eventGridPrincipalId") == {"storageBlobDataContributor"}
    dead_letter = body(rbac["resources"]["eventGridDeadLetter"])
    assert dead_letter["scope"] == "deadletterContainer", "Event Grid writes only dead letters"


def test_storage_is_secure_by_default(parsed: dict[str, Json]) -> None:
    storage = module_file(parsed, "storage")
    account = body(storage["resources"]["storage"])["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False
    assert account["supportsHttpsTrafficOnly"] is True
    blob = body(storage["resources"]["blobService"])["properties"]
    assert blob["deleteRetentionPolicy"]["enabled"] is True
    assert blob["containerDeleteRetentionPolicy"]["enabled"] is True


def test_key_vault_is_secure_by_default(parsed: dict[str, Json], main: Json) -> None:
    vault = body(module_file(parsed, "keyvault")["resources"]["vault"])["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert vault["enablePurgeProtection"] is True
    # The keys are secure parameters without a default: generated per environment, never a
    # literal (scripts/generate_keys.sh; the bicepparam reads them from the environment).
    for key in ("trainingKey", "predictionKey"):
        declaration = main["parameters"][key]
        assert "secure" in decorator_types(declaration)
        assert declaration["default"] is None
    text = "\n".join(p.read_text() for p in INFRA.rglob("*") if p.is_file())
    assert not re.search(r"\b[0-9a-f]{32}\b", text), "a key-like literal in infra/"


def test_flex_consumption_site_sets_no_ftps_state(parsed: dict[str, Json]) -> None:
    """Newer ARM stamps reject ``siteConfig.ftpsState`` on a Flex Consumption site (51021); FTP
    is off through the publishing-credentials policies instead."""
    functionapp = module_file(parsed, "functionapp")
    site = body(functionapp["resources"]["functionApp"])
    assert "ftpsState" not in site["properties"]["siteConfig"]
    policies = resources_of_type(functionapp,
                                 "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    by_name = {body(p)["name"]: body(p) for p in policies.values()}
    assert set(by_name) == {"ftp", "scm"}
    for policy in by_name.values():
        assert policy["parent"] == "functionApp"
        assert policy["properties"]["allow"] is False


def test_ftps_check_is_skipped_inline_on_the_site(checkov_report: Json) -> None:
    """The check that wants ``ftpsState`` is skipped, with its reason, on the site alone."""
    results = checkov_report["results"]
    skipped = [c for c in results["skipped_checks"] if c["check_id"] == FTPS_CHECK_ID]
    assert [c["resource"] for c in skipped] == ["Microsoft.Web/sites.functionApp"]
    reason = skipped[0]["check_result"]["suppress_comment"]
    assert "51021" in reason and "basicPublishingCredentialsPolicies" in reason
    for outcome in ("passed_checks", "failed_checks"):
        assert not [c for c in results[outcome] if c["check_id"] == FTPS_CHECK_ID], outcome


def test_deploying_principal_type_comes_from_azd(parsed: dict[str, Json], main: Json) -> None:
    """A pipeline deploys as a service principal: the role assignments of the deploying
    principal take its type from ``AZURE_PRINCIPAL_TYPE`` (azd sets it), not a fixed User."""
    types = {"User", "ServicePrincipal", "Group"}
    text = (INFRA / "main.bicepparam").read_text()
    assert re.search(r"^param principalType = readEnvironmentVariable\('AZURE_PRINCIPAL_TYPE', "
                     r"'User'\)$", text, flags=re.MULTILINE), "main.bicepparam ignores azd's type"
    declared = main["parameters"]["principalType"]
    assert set(allowed_values(declared)) == types and declared["default"] == "User"
    assert main_module_params(parsed, "rbac")["userPrincipalType"] == "principalType"
    rbac = module_file(parsed, "rbac")
    param = rbac["parameters"]["userPrincipalType"]
    assert set(allowed_values(param)) == types and param["default"] == "User"
    variables = rbac["variables"]
    user_grants = [variables["userStorageAssignments"]["value"],
                   variables["userKeyVaultReaders"]["value"]]
    for grant in user_grants:
        assert grant["config"]["principalType"] == "userPrincipalType", grant
    code = re.sub(r"//.*", "", (MODULES / "rbac.bicep").read_text())
    assert "principalType: 'User'" not in code


def test_function_app_is_flex_consumption(parsed: dict[str, Json]) -> None:
    functionapp = module_file(parsed, "functionapp")
    plan = body(functionapp["resources"]["plan"])
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = body(functionapp["resources"]["functionApp"])
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    assert site["identity"]["type"] == "UserAssigned"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert allowed_values(functionapp["parameters"]["pythonVersion"]) == ["3.11"]
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    tags = site["tags"]["function"]["parameters"]["arg_2"]
    assert tags["'azd-service-name'"] == "api"


def test_monitoring_is_wired_to_the_app_and_the_job(
    parsed: dict[str, Json], names_json: Json
) -> None:
    settings = app_settings(parsed, names_json)
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == (
        "applicationInsightsConnectionString"
    )
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].endswith("Authorization=AAD")
    module = module_file(parsed, "containerapps")
    diagnostics = resources_of_type(module, "Microsoft.Insights/diagnosticSettings")
    assert any(body(d)["scope"] == "environment" for d in diagnostics.values())
    job = body(resources_of_type(module, "Microsoft.App/jobs")["trainingJob"])
    env = {e["name"] for e in job["properties"]["template"]["containers"][0]["env"]}
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in env
    insights = body(module_file(parsed, "monitoring")["resources"]["applicationInsights"])
    assert insights["properties"]["DisableLocalAuth"] is True


# ------------------------------------------------------------------------------------------------
# Parameters file, azd and the hook scripts
# ------------------------------------------------------------------------------------------------


def test_bicepparam_sets_known_parameters(main: Json) -> None:
    text = (INFRA / "main.bicepparam").read_text()
    assert re.search(r"^using '\./main\.bicep'$", text, flags=re.MULTILINE)
    assigned = re.findall(r"^param (\w+) =", text, flags=re.MULTILINE)
    declared = main["parameters"]
    unknown = set(assigned) - set(declared)
    assert not unknown, f"main.bicepparam sets unknown parameters: {sorted(unknown)}"
    required = {n for n, d in declared.items() if d.get("default") is None}
    assert required <= set(assigned), f"required but unset: {sorted(required - set(assigned))}"
    # The keys come from the environment, never from the file.
    for key in ("trainingKey", "predictionKey"):
        line = re.search(rf"^param {key} = (.*)$", text, flags=re.MULTILINE)
        assert line and line.group(1).startswith("readEnvironmentVariable("), key


def test_azure_yaml_and_hooks() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    api = config["services"]["api"]
    assert api["host"] == "function" and api["language"] == "python"
    assert set(config["hooks"]) == {"preprovision", "postprovision", "postdeploy"}
    sh = shutil.which("sh")
    for hook in config["hooks"].values():
        script = ROOT / hook["run"]
        assert script.is_file(), f"hook script {hook['run']} missing"
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        assert os.access(script, os.X_OK), f"{rel(script)} is not executable"
        if sh:
            proc = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{rel(script)}: {proc.stderr}"


# ------------------------------------------------------------------------------------------------
# The deploy docs (README.md, "Deploy to Azure") against what the deployment really is
# ------------------------------------------------------------------------------------------------

# Resource type -> (the words the README uses for it, the README section that says so); None: a
# part of a documented parent (the storage account's services, the plan of the Function app, ...).
# A new resource type in the Bicep fails test_every_deployed_resource_type_is_documented until it
# is documented and listed here.
RESOURCE_DOCS: dict[str, tuple[str, str] | None] = {
    "Microsoft.Resources/resourceGroups": ("resource group `rg-<environment>`",
                                           "Deploy to Azure"),
    "Microsoft.Storage/storageAccounts": ("Storage account", "Deploy to Azure"),
    "Microsoft.Web/sites": ("Function app on Flex Consumption", "Deploy to Azure"),
    "Microsoft.EventGrid/systemTopics": ("Event Grid system topic", "Deploy to Azure"),
    "Microsoft.EventGrid/systemTopics/eventSubscriptions": ("one subscription per drop container",
                                                            "Deploy to Azure"),
    "Microsoft.App/managedEnvironments": ("Container Apps environment", "Deploy to Azure"),
    "Microsoft.App/jobs": ("the training Job", "Deploy to Azure"),
    "Microsoft.ContainerRegistry/registries": ("Container Registry", "Deploy to Azure"),
    "Microsoft.KeyVault/vaults": ("Key Vault", "Deploy to Azure"),
    "Microsoft.ManagedIdentity/userAssignedIdentities": ("user-assigned managed identities",
                                                         "Deploy to Azure"),
    "Microsoft.OperationalInsights/workspaces": ("Log Analytics", "Deploy to Azure"),
    "Microsoft.Insights/components": ("Application Insights", "Deploy to Azure"),
    "Microsoft.EventGrid/topics": ("Event Grid custom topic", "Deploy to Azure"),
    "Microsoft.Storage/storageAccounts/blobServices": None,
    "Microsoft.Storage/storageAccounts/blobServices/containers": None,
    "Microsoft.Storage/storageAccounts/managementPolicies": None,
    "Microsoft.Storage/storageAccounts/queueServices": None,
    "Microsoft.Storage/storageAccounts/queueServices/queues": None,
    "Microsoft.Storage/storageAccounts/tableServices": None,
    "Microsoft.Storage/storageAccounts/tableServices/tables": None,
    "Microsoft.KeyVault/vaults/secrets": None,
    "Microsoft.Authorization/roleAssignments": None,
    "Microsoft.Insights/diagnosticSettings": None,
    "Microsoft.Web/serverfarms": None,
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": None,
}


def readme_section(title: str) -> str:
    """The text of the README's ``## title`` section (up to the next ``## ``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text,
                      flags=re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table in ``text`` whose header line starts
    with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def bicepparam_environment() -> dict[str, tuple[str, str | None]]:
    """``param name = ...readEnvironmentVariable('VAR'[, 'default'])`` lines of main.bicepparam:
    parameter -> (variable, its default, None when it has none)."""
    text = (INFRA / "main.bicepparam").read_text()
    pattern = r"^param (\w+) = .*?readEnvironmentVariable\('(\w+)'(?:, '([^']*)')?\)"
    return {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(pattern, text, flags=re.MULTILINE)}


def test_deploy_docs_settings_table_is_what_main_bicepparam_reads(main: Json) -> None:
    """Every row of "Settings" names the variable main.bicepparam reads into that parameter, with
    that default (`literal`, none/placeholder: empty, required: none at all); every variable
    main.bicepparam reads has a row."""
    settings = readme_section("Deploy to Azure").split("### Settings", 1)[1]
    documented: dict[str, tuple[str, str | None]] = {}
    for variables, parameters, default in markdown_table(settings, "| Variable |"):
        literal = re.match(r"`([^`]*)`", default)
        value = literal.group(1) if literal else None if default.startswith("required") else ""
        named = re.split(r":| \(", parameters, maxsplit=1)[0]  # what follows explains it
        for variable, parameter in zip(re.findall(r"`(\w+)`", variables),
                                       re.findall(r"`(\w+)`", named), strict=True):
            documented[parameter] = (variable, value)
    read = bicepparam_environment()
    assert read, "main.bicepparam reads no environment variable"
    assert documented == read, (
        "README.md, 'Settings' and infra/main.bicepparam disagree (parameter -> (variable, "
        f"default)):\n  README: {documented}\n  bicepparam: {read}")
    assert set(read) <= set(main["parameters"]), "main.bicepparam sets undeclared parameters"


def test_deploy_docs_name_only_what_exists(parsed: dict[str, Json], main: Json,
                                           names_json: Json) -> None:
    """Every file, hook, parameter, output and variable the deploy docs name is one the
    deployment has: a renamed script, output or parameter fails here, not on a reader's
    subscription."""
    section = readme_section("Deploy to Azure")
    spans = code_spans(section)
    paths = {span.split()[0] for span in spans
             if re.match(r"(scripts|infra|training_job|visionpipe|tests)/", span)}
    assert paths, "the deploy docs name no file"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the deploy docs name files that do not exist: {missing}"

    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    named_hooks = re.findall(r"`(\w+)` \(`(scripts/[\w.]+)`\)", section)
    assert {hook for hook, _ in named_hooks} == set(hooks), "every azd hook is described once"
    for hook, script in named_hooks:
        assert hooks[hook]["run"] == script, f"README: {hook} runs {script}; azure.yaml disagrees"

    parameters = set(main["parameters"])
    camel = {span for span in spans if re.fullmatch(r"[a-z]+[A-Z]\w*", span)}
    assert camel <= parameters, f"not parameters of main.bicep: {sorted(camel - parameters)}"

    outputs = set(main["outputs"])
    scripts_text = "\n".join(p.read_text() for p in (ROOT / "scripts").glob("*.sh"))
    read_by_bicepparam = {variable for variable, _ in bicepparam_environment().values()}
    known = (outputs | read_by_bicepparam | set(app_settings(parsed, names_json))
             | {n for n in dir(names) if n.isupper()}
             | set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", scripts_text))
             | {str(v) for v in allowed_values(main["parameters"]["gpu"])})
    upper = {span for span in spans if re.fullmatch(r"[A-Z][A-Z0-9_]*", span)}
    upper |= set(re.findall(r"azd env get-value (\w+)", section))
    upper |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", section))
    unknown = sorted(upper - known)
    assert not unknown, f"the deploy docs name variables nothing defines: {unknown}"
    # What `azd env get-value` and the no-azd path read after a deployment are its outputs (or
    # what the hooks store): an output renamed in main.bicep must be renamed in the docs.
    for name in re.findall(r"azd env get-value (\w+)", section):
        assert name in outputs or name in scripts_text, f"{name}: no output and no hook sets it"


def test_every_deployed_resource_type_is_documented(parsed: dict[str, Json]) -> None:
    """Every module of main.bicep is deployed, every resource type any module declares is in
    RESOURCE_DOCS, and the README names each top-level one where RESOURCE_DOCS says; every row
    of the deploy table ("What") is a resource the Bicep declares."""
    used = {m["detail"]["path"] for m in parsed["infra/main.bicep"]["modules"].values()}
    unused = sorted(rel(p) for p in MODULES.glob("*.bicep") if f"modules/{p.name}" not in used)
    assert not unused, f"Bicep modules main.bicep never deploys: {unused}"
    declared = {res["type"] for tree in parsed.values()
                for res in tree.get("resources", {}).values()}
    undocumented = sorted(declared - set(RESOURCE_DOCS))
    assert not undocumented, f"document these resource types (README.md, RESOURCE_DOCS): " \
                             f"{undocumented}"
    stale = sorted(set(RESOURCE_DOCS) - declared)
    assert not stale, f"RESOURCE_DOCS lists types the Bicep no longer declares: {stale}"
    for resource_type, doc in RESOURCE_DOCS.items():
        if doc is not None:
            words, title = doc
            assert words in readme_section(title), (
                f"{resource_type}: README.md, '{title}' does not say {words!r}")
    deploy = readme_section("Deploy to Azure")
    rows = markdown_table(deploy, "| What | Why |")
    assert rows, "the deploy table has no rows"
    phrases = [doc[0] for doc in RESOURCE_DOCS.values() if doc is not None]
    for what, _why in rows:
        assert any(p in what for p in phrases), f"a deploy table row no resource backs: {what}"
