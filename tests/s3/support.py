"""Helpers of the storage tests: an S3Storage on the test server's gate."""

from __future__ import annotations

from storage.s3 import S3Config, S3Storage
from tests.s3server import CREDENTIALS, S3Server


def s3_storage(server: S3Server, bucket: str, **config: object) -> S3Storage:
    values: dict[str, object] = {"bucket": bucket, "endpoint": server.endpoint, "path_style": True, "timeout": 5.0,
                                 "retry_seconds": 1.0}  # fmt: skip
    values.update(config)
    return S3Storage(S3Config(**values), credentials=dict(CREDENTIALS))  # type: ignore[arg-type]
