"""For end-to-end and browser tests on S3 storage: the settings that point cliplog's processes at the test S3
server (`tests/s3server.py`, moto behind a gate), and direct reads of what the bucket holds."""

from __future__ import annotations

import asyncio
import os
import secrets

from tests.s3server import TEST_ENV, S3Server

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def new_bucket(server: S3Server, prefix: str = "e2e") -> str:
    bucket = f"{prefix}-{secrets.token_hex(4)}"
    server.create_bucket(bucket)
    return bucket


def s3_env(server: S3Server, bucket: str, serve: str = "redirect", **extra: str) -> dict[str, str]:
    """CLIPLOG_* and AWS_* settings of a process on the test bucket (sources under `sources/`, clips under `clips/`)."""
    return {
        **TEST_ENV,
        "CLIPLOG_STORAGE": "s3",
        "CLIPLOG_S3_ENDPOINT": server.endpoint,
        "CLIPLOG_S3_BUCKET": bucket,
        "CLIPLOG_S3_REGION": "us-east-1",
        "CLIPLOG_S3_SOURCE_PREFIX": "sources/",
        "CLIPLOG_S3_OUTPUT_PREFIX": "clips/",
        "CLIPLOG_S3_PATH_STYLE": "true",
        "CLIPLOG_S3_SERVE": serve,
        **extra,
    }


def base_env() -> dict[str, str]:
    """This process's environment without CLIPLOG_* settings or proxies (the store is on 127.0.0.1)."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("CLIPLOG_") and k not in PROXY_VARIABLES
    } | {"NO_PROXY": "127.0.0.1,localhost"}


def stored_bytes(server: S3Server, bucket: str, key: str) -> bytes:
    """The object as the bucket holds it (read with the test credentials: what the worker uploaded is private)."""
    from tests.s3.support import s3_storage

    async def read() -> bytes:
        storage = s3_storage(server, bucket, output_prefix="")
        try:
            size = (await storage.head_output(key)).size
            return b"".join([chunk async for chunk in storage.read_output(key, 0, size)])
        finally:
            await storage.close()

    return asyncio.run(read())


__all__ = ["base_env", "new_bucket", "s3_env", "stored_bytes"]
