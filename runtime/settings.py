"""Configuration from CLIPLOG_* environment variables: every setting of every process, in one `Settings`. Bad values
fail at start with a clear message. Each variable is documented once: API.md's in API.md (additions in README.md),
the feed's tunables in docs/feed.md."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import msgspec

from domain.clip import Context
from domain.policy import RetryPolicy


class ConfigError(Exception):
    pass


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".cliplog")
    media_root: Path = Path(".cliplog/media")
    output_root: Path = Path(".cliplog/clips")
    ffmpeg: str = "ffmpeg"
    ffprobe: str | None = None
    attempt_timeout: float = 600.0
    heartbeat_interval: float = 5.0
    lease_timeout: float = 20.0
    stall_after: float = 30.0
    max_attempts: int = 3
    retry_base: float = 10.0
    retry_max: float = 600.0
    slow_after: float = 300.0
    poll_after: float = 30.0
    max_clip_seconds: float = 600.0
    dev_token: str | None = None
    reaper_interval: float = 5.0
    requeue_after: float = 30.0
    shutdown_grace: float = 20.0
    orphan_grace: float = 3600.0
    orphan_sweep_interval: float = 600.0
    ws_ping_interval: float = 15.0
    ws_send_timeout: float = 10.0
    feed_buffer: int = 1000
    feed_poll_interval: float = 1.0
    dispatch: str = "fair"  # "fair": admission as workers free up (handlers/dispatcher.py); "fifo": enqueue on sight
    project_concurrency: int | None = None  # running attempts per project (fair dispatch); None: unlimited
    owner_concurrency: int | None = None  # per user
    cors_origins: tuple[str, ...] = ()  # origins a browser may call the API and open the feed from ("*": any)
    ws_per_token: int = 20  # open feed WebSockets per token and API process (one more: close 4429)
    token_check_interval: float = 1.0  # seconds between checks of open sockets' tokens (revoked: close 4401)
    # Storage (README "Object storage"): "local" (media_root/output_root) or "s3".
    storage: str = "local"
    s3_endpoint: str | None = None  # None: AWS S3
    s3_region: str = "us-east-1"
    s3_bucket: str | None = None  # the sources' bucket (required with storage "s3")
    s3_output_bucket: str | None = None  # the clips' bucket; None: s3_bucket
    s3_source_prefix: str = "sources/"
    s3_output_prefix: str = "clips/"
    s3_serve: str = "redirect"  # GET .../file: "redirect" to a presigned URL, or "proxy" the bytes through the API
    s3_path_style: bool = False  # path-style addressing (endpoint/bucket/key), for MinIO, Ceph, many R2 set-ups
    s3_url_expires: float = 300.0  # seconds a presigned download URL (the file route's redirect) stays valid
    s3_timeout: float = 30.0  # seconds per storage request (an attempt's own deadline bounds it further)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, base_seconds=self.retry_base, cap_seconds=self.retry_max)

    def context(self, now, jitter: float = 0.5) -> Context:  # noqa: ANN001 - datetime
        return Context(
            now=now,
            jitter=jitter,
            policy=self.retry_policy,
            attempt_timeout=self.attempt_timeout,
            slow_after=self.slow_after,
            max_clip_seconds=self.max_clip_seconds,
        )


_NUMBERS: dict[str, tuple[str, type]] = {
    "CLIPLOG_ATTEMPT_TIMEOUT": ("attempt_timeout", float),
    "CLIPLOG_HEARTBEAT_INTERVAL": ("heartbeat_interval", float),
    "CLIPLOG_LEASE_TIMEOUT": ("lease_timeout", float),
    "CLIPLOG_STALL_AFTER": ("stall_after", float),
    "CLIPLOG_MAX_ATTEMPTS": ("max_attempts", int),
    "CLIPLOG_RETRY_BASE": ("retry_base", float),
    "CLIPLOG_RETRY_MAX": ("retry_max", float),
    "CLIPLOG_SLOW_AFTER": ("slow_after", float),
    "CLIPLOG_POLL_AFTER": ("poll_after", float),
    "CLIPLOG_MAX_CLIP_SECONDS": ("max_clip_seconds", float),
    "CLIPLOG_REAPER_INTERVAL": ("reaper_interval", float),
    "CLIPLOG_REQUEUE_AFTER": ("requeue_after", float),
    "CLIPLOG_SHUTDOWN_GRACE": ("shutdown_grace", float),
    "CLIPLOG_ORPHAN_GRACE": ("orphan_grace", float),
    "CLIPLOG_ORPHAN_SWEEP_INTERVAL": ("orphan_sweep_interval", float),
    "CLIPLOG_WS_PING_INTERVAL": ("ws_ping_interval", float),
    "CLIPLOG_WS_SEND_TIMEOUT": ("ws_send_timeout", float),
    "CLIPLOG_FEED_BUFFER": ("feed_buffer", int),
    "CLIPLOG_FEED_POLL_INTERVAL": ("feed_poll_interval", float),
    "CLIPLOG_PROJECT_CONCURRENCY": ("project_concurrency", int),
    "CLIPLOG_OWNER_CONCURRENCY": ("owner_concurrency", int),
    "CLIPLOG_WS_PER_TOKEN": ("ws_per_token", int),
    "CLIPLOG_TOKEN_CHECK_INTERVAL": ("token_check_interval", float),
    "CLIPLOG_S3_URL_EXPIRES": ("s3_url_expires", float),
    "CLIPLOG_S3_TIMEOUT": ("s3_timeout", float),
}
DISPATCH_MODES = ("fair", "fifo")
STORAGE_BACKENDS = ("local", "s3")
S3_SERVE_MODES = ("redirect", "proxy")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _prefix(variable: str, raw: str | None, default: str) -> str:
    """A key prefix: empty (the bucket's root) or folder-like, ending in `/`; no leading `/`, `..` or `//`."""
    value = default if raw is None else raw.strip()
    if value and not value.endswith("/"):
        value += "/"
    if value.startswith("/") or "//" in value or any(part in (".", "..") for part in value.split("/")):
        raise ConfigError(f"{variable}={raw!r} must be a relative prefix such as 'sources/' (or empty)")
    return value


def _flag(variable: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{variable} must be true or false (got {raw!r})")


def storage_settings(env: Mapping[str, str]) -> dict[str, object]:
    """CLIPLOG_STORAGE and the CLIPLOG_S3_* variables, checked: with `s3`, a bucket is required."""
    storage = env.get("CLIPLOG_STORAGE") or "local"
    if storage not in STORAGE_BACKENDS:
        raise ConfigError(f"CLIPLOG_STORAGE must be one of {', '.join(STORAGE_BACKENDS)} (got {storage!r})")
    serve = env.get("CLIPLOG_S3_SERVE") or "redirect"
    if serve not in S3_SERVE_MODES:
        raise ConfigError(f"CLIPLOG_S3_SERVE must be one of {', '.join(S3_SERVE_MODES)} (got {serve!r})")
    endpoint = (env.get("CLIPLOG_S3_ENDPOINT") or "").strip() or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"CLIPLOG_S3_ENDPOINT must be an http(s):// URL such as https://minio:9000 (got {endpoint!r})")
    buckets = {}
    for variable, field in (("CLIPLOG_S3_BUCKET", "s3_bucket"), ("CLIPLOG_S3_OUTPUT_BUCKET", "s3_output_bucket")):
        bucket = (env.get(variable) or "").strip() or None
        if bucket is not None and not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"{variable}={bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.', '-')")
        buckets[field] = bucket
    if storage == "s3" and buckets["s3_bucket"] is None:
        raise ConfigError("CLIPLOG_STORAGE=s3 needs CLIPLOG_S3_BUCKET (the bucket the sources are in)")
    return {
        "storage": storage,
        "s3_endpoint": endpoint,
        "s3_region": (env.get("CLIPLOG_S3_REGION") or "").strip() or "us-east-1",
        **buckets,
        "s3_source_prefix": _prefix("CLIPLOG_S3_SOURCE_PREFIX", env.get("CLIPLOG_S3_SOURCE_PREFIX"), "sources/"),
        "s3_output_prefix": _prefix("CLIPLOG_S3_OUTPUT_PREFIX", env.get("CLIPLOG_S3_OUTPUT_PREFIX"), "clips/"),
        "s3_serve": serve,
        "s3_path_style": _flag("CLIPLOG_S3_PATH_STYLE", env.get("CLIPLOG_S3_PATH_STYLE")),
    }


def parse_origins(raw: str | None) -> tuple[str, ...]:
    """`CLIPLOG_CORS_ORIGINS`: comma-separated `scheme://host[:port]` origins, or `*`; normalised to lower case."""
    origins: list[str] = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            origins.append(item)
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"CLIPLOG_CORS_ORIGINS: {item!r} is not an origin such as https://app.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def find_ffmpeg(env: Mapping[str, str]) -> str:
    if env.get("CLIPLOG_FFMPEG"):
        return env["CLIPLOG_FFMPEG"]
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:  # the pip package is a dependency; this is a broken install
        raise ConfigError(f"no ffmpeg found on PATH and the imageio-ffmpeg binary is unusable: {error}") from None


def find_ffprobe(env: Mapping[str, str]) -> str | None:
    """ffprobe when there is one; None means probing falls back to `ffmpeg -i` (the pip ffmpeg ships no ffprobe)."""
    return env.get("CLIPLOG_FFPROBE") or shutil.which("ffprobe")


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for variable, (field, kind) in _NUMBERS.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{variable} must be a finite number greater than 0 (got {raw})")
        values[field] = value
    defaults = Settings()
    heartbeat = values.get("heartbeat_interval", defaults.heartbeat_interval)
    lease = values.get("lease_timeout", defaults.lease_timeout)
    if heartbeat >= lease:  # type: ignore[operator]
        raise ConfigError(
            f"CLIPLOG_HEARTBEAT_INTERVAL ({heartbeat:g}) must be shorter than CLIPLOG_LEASE_TIMEOUT ({lease:g}), "
            "or every healthy attempt would be timed out"
        )
    dispatch = env.get("CLIPLOG_DISPATCH") or "fair"
    if dispatch not in DISPATCH_MODES:
        raise ConfigError(f"CLIPLOG_DISPATCH must be one of {', '.join(DISPATCH_MODES)} (got {dispatch!r})")
    data_dir = Path(env.get("CLIPLOG_DATA_DIR") or ".cliplog").absolute()
    orphan_grace = values.get("orphan_grace", defaults.orphan_grace)
    attempt_span = values.get("attempt_timeout", defaults.attempt_timeout) + lease  # type: ignore[operator]
    if orphan_grace <= attempt_span:  # type: ignore[operator]
        raise ConfigError(
            f"CLIPLOG_ORPHAN_GRACE ({orphan_grace:g}) must be longer than CLIPLOG_ATTEMPT_TIMEOUT + "
            f"CLIPLOG_LEASE_TIMEOUT ({attempt_span:g}), or the sweep could delete a clip an attempt is still recording"
        )
    return Settings(
        database_url=env.get("CLIPLOG_DATABASE_URL") or None,
        redis_url=env.get("CLIPLOG_REDIS_URL") or None,
        data_dir=data_dir,
        media_root=Path(env.get("CLIPLOG_MEDIA_ROOT") or data_dir / "media").absolute(),
        output_root=Path(env.get("CLIPLOG_OUTPUT_ROOT") or data_dir / "clips").absolute(),
        ffmpeg=find_ffmpeg(env),
        ffprobe=find_ffprobe(env),
        dev_token=env.get("CLIPLOG_DEV_TOKEN") or None,
        dispatch=dispatch,
        cors_origins=parse_origins(env.get("CLIPLOG_CORS_ORIGINS")),
        **storage_settings(env),  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )
