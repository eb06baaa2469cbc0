"""The one place that reads configuration.

Settings are read from the environment (Function app settings in Azure, ``local.settings.json``
locally) when first asked for, never at import time, so tests and the local host can set them
first. Every setting name comes from :mod:`visionpipe.names`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TypedDict

from visionpipe import names

MB = 1024 * 1024

# The well-known Azurite development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_connection_string(host: str = "127.0.0.1", blob_port: int = 10000,
                              queue_port: int = 10001, table_port: int = 10002) -> str:
    """Connection string for an Azurite instance (explicit endpoints work with every SDK)."""
    base = f"http://{host}"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={base}:{blob_port}/{AZURITE_ACCOUNT};"
        f"QueueEndpoint={base}:{queue_port}/{AZURITE_ACCOUNT};"
        f"TableEndpoint={base}:{table_port}/{AZURITE_ACCOUNT};"
    )


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(value: str | None, default: int) -> int:
    return default if value is None or value.strip() == "" else int(value)


def _seconds(value: str | None, default: float) -> float:
    return default if value is None or value.strip() == "" else max(0.1, float(value))


class _StorageClientOptions(TypedDict):
    retry_total: int
    retry_backoff_seconds: float
    connect_timeout_seconds: float
    read_timeout_seconds: float
    health_timeout_seconds: float


def _storage_client_options(env: Mapping[str, str]) -> _StorageClientOptions:
    """The bounded retry policy and timeouts of every storage client (see StorageSettings)."""
    return {
        "retry_total": max(0, _int(env.get(names.SETTING_STORAGE_RETRY_TOTAL), 2)),
        "retry_backoff_seconds": _seconds(env.get(names.SETTING_STORAGE_RETRY_BACKOFF_SECONDS),
                                          1.0),
        "connect_timeout_seconds": _seconds(
            env.get(names.SETTING_STORAGE_CONNECT_TIMEOUT_SECONDS), 2.0),
        "read_timeout_seconds": _seconds(env.get(names.SETTING_STORAGE_READ_TIMEOUT_SECONDS),
                                         10.0),
        "health_timeout_seconds": _seconds(env.get(names.SETTING_HEALTH_TIMEOUT_SECONDS), 3.0),
    }


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the storage account: a connection string, or an account name + identity."""

    connection_string: str | None = None
    account_name: str | None = None
    client_id: str | None = None  # user-assigned managed identity, when `__credential` is one
    blob_endpoint: str | None = None
    queue_endpoint: str | None = None
    table_endpoint: str | None = None
    # Bounded retries and timeouts on every client, so that a storage outage is answered in
    # seconds: retries after the first attempt, the pause before each, TCP connect and socket
    # read limits. The SDK defaults (10 retries, 15 s+ exponential back-off) held requests ~80 s.
    retry_total: int = 2
    retry_backoff_seconds: float = 1.0
    connect_timeout_seconds: float = 2.0
    read_timeout_seconds: float = 10.0  # per socket read, not per transfer; > Tables' 5 s
    # GET /health gives up on storage after this long, whatever the SDK is doing.
    health_timeout_seconds: float = 3.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], prefix: str = names.STORAGE_CONNECTION
    ) -> StorageSettings:
        conn = env.get(prefix)
        if conn:
            if conn.strip() == "UseDevelopmentStorage=true":
                conn = azurite_connection_string()
            return cls(connection_string=conn, **_storage_client_options(env))
        account = env.get(f"{prefix}__accountName")
        blob = env.get(f"{prefix}__blobServiceUri")
        if not account and not blob:
            raise RuntimeError(
                f"No storage configured: set {prefix} (a connection string) or "
                f"{prefix}__accountName (identity-based, DefaultAzureCredential)."
            )
        suffix = "core.windows.net"
        return cls(
            account_name=account,
            client_id=env.get(f"{prefix}__clientId"),
            blob_endpoint=blob or f"https://{account}.blob.{suffix}",
            queue_endpoint=env.get(f"{prefix}__queueServiceUri") or f"https://{account}.queue.{suffix}",
            table_endpoint=env.get(f"{prefix}__tableServiceUri") or f"https://{account}.table.{suffix}",
            **_storage_client_options(env),
        )


@dataclass(frozen=True)
class ImageLimits:
    """The image limits (docs/ARCHITECTURE.md, "Image rules (both paths)") of one path
    (training or prediction)."""

    max_bytes: int
    min_side: int = 256
    max_side: int = 10_240
    max_aspect: float = 25.0
    max_pixels: int = 64_000_000
    upscale_small: bool = False
    # Pixels one decode may hold in memory (after JPEG DCT scaling), None: no such budget. Set on
    # the prediction path, where a request must not cost hundreds of MB (PREDICTION_MAX_PIXELS).
    max_decoded_pixels: int | None = None


#: 4096 x 4096: a decoded RGB(A) picture of at most 64 MB, so DECODE_CONCURRENCY (2) decodes stay
#: near 160 MB even for palette images converted on the way; a JPEG counts at its reduced decode
#: scale, so 10,240 px JPEGs (1/8 scale: 1.6 MP) still pass.
DEFAULT_PREDICTION_MAX_PIXELS = 4096 * 4096
DEFAULT_DECODE_CONCURRENCY = 2


def decode_concurrency(env: Mapping[str, str] | None = None) -> int:
    """How many image decodes one process runs at once (DECODE_CONCURRENCY, at least 1).

    Read on its own, not through :class:`Settings`, because the training job and plain library
    use decode images without any storage configured.
    """
    env = os.environ if env is None else env
    return max(1, _int(env.get(names.SETTING_DECODE_CONCURRENCY), DEFAULT_DECODE_CONCURRENCY))


def _cores() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServingConfig:
    """How much of the machine one session may use.

    A Flex Consumption instance has 2-4 vCPUs and serves several requests at once. By default
    each core (at most 4) runs one request's model single-threaded, and requests that arrive
    while every core is busy are batched into the next run; ONNX Runtime's threads never spin
    (spinning burns the cores that decoding the next request needs). Measured on two cores with
    MobileNetV3-Small (``bench/predict.py``, quiet machine): a second intra-op thread does not
    make one run faster, and with four clients one run per core is ~15% cheaper per image than
    one two-thread run at a time.
    """

    concurrent_runs: int = field(default_factory=lambda: _cores())
    intra_op_threads: int = 0  # 0: the instance's cores (at most 4) shared by concurrent_runs
    max_batch: int = 16
    pointer_max_age: float = 2.0

    def __post_init__(self) -> None:
        if self.intra_op_threads <= 0:
            object.__setattr__(self, "intra_op_threads",
                               max(1, _cores() // max(1, self.concurrent_runs)))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServingConfig:
        default = cls()
        return cls(
            concurrent_runs=int(env.get(names.SETTING_SERVING_RUNS) or default.concurrent_runs),
            intra_op_threads=int(env.get(names.SETTING_SERVING_THREADS) or 0),
            max_batch=max(1, int(env.get(names.SETTING_SERVING_MAX_BATCH) or default.max_batch)),
            pointer_max_age=float(env.get(names.SETTING_SERVING_POINTER_MAX_AGE)
                                  or default.pointer_max_age),
        )


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    training_key: str | None = None
    prediction_key: str | None = None
    auto_create_projects: bool = True
    drop_predict_annotated_images: bool = False
    training_limits: ImageLimits = field(default_factory=lambda: ImageLimits(max_bytes=6 * MB))
    prediction_limits: ImageLimits = field(default_factory=lambda: ImageLimits(
        max_bytes=4 * MB, max_decoded_pixels=DEFAULT_PREDICTION_MAX_PIXELS))
    training_requests_queue: str = names.TRAINING_REQUESTS
    training_events_queue: str = names.TRAINING_EVENTS
    # CIDRs exempt from the refusal of private addresses in URL uploads (empty: none).
    url_fetch_allowed_networks: tuple[str, ...] = ()
    export_link_ttl_seconds: int = 3600
    # The whole URL fetch (resolve, connect, headers, body) ends within this many seconds.
    url_fetch_timeout_seconds: float = 10.0
    # Where clients reach the app (``https://host``, no trailing slash): signed export links and
    # image URIs are built on it. None: the request's own Host (local runs only; in Azure the
    # Bicep sets it, so a forged Host header cannot redirect a link).
    public_base_url: str | None = None
    # Days a stored prediction's picture is kept (a lifecycle rule deletes it in Azure); older
    # stored predictions are answered without image URIs.
    prediction_image_retention_days: int = 30
    auto_publish: bool = False
    auto_publish_name: str = "latest"
    serving: ServingConfig = field(default_factory=ServingConfig)
    # Lifecycle events: an Event Grid custom topic endpoint (managed identity), or None for the
    # local table (visionpipe.pipeline.lifecycle_events).
    event_grid_topic_endpoint: str | None = None
    # Keys from Key Vault (visionpipe.api.auth) when set; cached for the TTL, and a rotated-out
    # key is still accepted for the grace period while clients switch.
    key_vault_uri: str | None = None
    key_cache_ttl_seconds: float = 300.0
    key_rotation_grace_seconds: float = 3600.0
    # Project copy tokens (visionpipe.api.project_copy): the HMAC key (None: derived from the
    # training key) and their lifetime.
    project_copy_signing_key: str | None = None
    project_copy_token_ttl_seconds: int = 24 * 3600
    # Local stack only: webhooks that get the lifecycle CloudEvents (visionpipe.local.webhooks).
    local_event_webhooks: tuple[str, ...] = ()
    local_webhook_retry_seconds: float = 10.0
    local_webhook_max_attempts: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        min_side = _int(env.get(names.SETTING_MIN_IMAGE_SIDE), 256)
        max_pixels = _int(env.get(names.SETTING_MAX_IMAGE_PIXELS), 64_000_000)
        upscale = _flag(env.get(names.SETTING_UPSCALE_SMALL_IMAGES), False)

        def limits(setting: str, default_bytes: int) -> ImageLimits:
            return ImageLimits(
                max_bytes=_int(env.get(setting), default_bytes),
                min_side=min_side,
                max_pixels=max_pixels,
                upscale_small=upscale,
            )

        return cls(
            storage=StorageSettings.from_env(env),
            training_key=env.get(names.SETTING_TRAINING_KEY) or None,
            prediction_key=env.get(names.SETTING_PREDICTION_KEY) or None,
            auto_create_projects=_flag(env.get(names.SETTING_AUTO_CREATE_PROJECTS), True),
            drop_predict_annotated_images=_flag(
                env.get(names.SETTING_DROP_PREDICT_ANNOTATED_IMAGES), False),
            training_limits=limits(names.SETTING_MAX_TRAINING_IMAGE_BYTES, 6 * MB),
            prediction_limits=replace(
                limits(names.SETTING_MAX_PREDICTION_IMAGE_BYTES, 4 * MB),
                max_decoded_pixels=max(1, _int(env.get(names.SETTING_PREDICTION_MAX_PIXELS),
                                               DEFAULT_PREDICTION_MAX_PIXELS))),
            training_requests_queue=env.get(names.SETTING_TRAINING_REQUESTS_QUEUE)
            or names.TRAINING_REQUESTS,
            training_events_queue=env.get(names.SETTING_TRAINING_EVENTS_QUEUE)
            or names.TRAINING_EVENTS,
            url_fetch_allowed_networks=tuple(
                n.strip()
                for n in env.get(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "").split(",")
                if n.strip()
            ),
            export_link_ttl_seconds=max(
                1, _int(env.get(names.SETTING_EXPORT_LINK_TTL_SECONDS), 3600)
            ),
            url_fetch_timeout_seconds=max(
                0.1, float(env.get(names.SETTING_URL_FETCH_TIMEOUT_SECONDS) or 10.0)
            ),
            public_base_url=(env.get(names.SETTING_PUBLIC_BASE_URL) or "").strip().rstrip("/")
            or None,
            prediction_image_retention_days=max(
                1, _int(env.get(names.SETTING_PREDICTION_IMAGE_RETENTION_DAYS), 30)),
            auto_publish=_flag(env.get(names.SETTING_AUTO_PUBLISH), False),
            auto_publish_name=(env.get(names.SETTING_AUTO_PUBLISH_NAME) or "").strip()
            or "latest",
            serving=ServingConfig.from_env(env),
            event_grid_topic_endpoint=(env.get(names.SETTING_EVENT_GRID_TOPIC_ENDPOINT) or ""
                                       ).strip() or None,
            key_vault_uri=(env.get(names.SETTING_KEY_VAULT_URI) or "").strip() or None,
            key_cache_ttl_seconds=max(
                0.0, float(env.get(names.SETTING_KEY_CACHE_TTL_SECONDS) or 300.0)),
            key_rotation_grace_seconds=max(
                0.0, float(env.get(names.SETTING_KEY_ROTATION_GRACE_SECONDS) or 3600.0)),
            project_copy_signing_key=env.get(names.SETTING_PROJECT_COPY_SIGNING_KEY) or None,
            project_copy_token_ttl_seconds=max(
                1, _int(env.get(names.SETTING_PROJECT_COPY_TOKEN_TTL_SECONDS), 24 * 3600)),
            local_event_webhooks=tuple(
                u.strip() for u in env.get(names.SETTING_LOCAL_EVENT_WEBHOOKS, "").split(",")
                if u.strip()),
            local_webhook_retry_seconds=_seconds(
                env.get(names.SETTING_LOCAL_WEBHOOK_RETRY_SECONDS), 10.0),
            local_webhook_max_attempts=max(
                1, _int(env.get(names.SETTING_LOCAL_WEBHOOK_MAX_ATTEMPTS), 30)),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use."""
    return Settings.from_env()


_reset_hooks: list[Callable[[], None]] = []


def on_reset(hook: Callable[[], None]) -> None:
    """Run ``hook`` whenever settings are reset: modules that cache something built from settings
    (the storage clients) register here, so this module never imports them (settings sits below
    storage in the layers of docs/ARCHITECTURE.md, "Where code lives")."""
    _reset_hooks.append(hook)


def reset_settings() -> None:
    """Forget cached settings and clients (tests and the local host change the environment)."""
    get_settings.cache_clear()
    for hook in _reset_hooks:
        hook()
