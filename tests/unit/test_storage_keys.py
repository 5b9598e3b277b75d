"""The source-key rule (storage/keys.py), the storage settings (runtime/settings.py) and how the S3 backend names
a failure (storage/s3.py `storage_error`): pure, no store needed."""

from __future__ import annotations

import pytest

from domain.policy import is_retryable
from runtime.settings import ConfigError, load
from storage.base import ObjectMissing, StorageDenied, StorageUnavailable
from storage.keys import MAX_KEY_BYTES, source_key_problem
from storage.s3 import shared_file_credentials, storage_error


@pytest.mark.parametrize(
    "key",
    ["match.mp4", "games/2026/final.mp4", "a b/c (1).MOV", "ünïcode/ß.mp4", "x" * MAX_KEY_BYTES, "dots.in.name..mp4"],
)
def test_keys_a_source_may_have(key: str) -> None:
    assert source_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "empty"),
        ("/etc/passwd", "leading /"),
        ("../x", "'..'"),
        ("games/../../x.mp4", "'..'"),
        ("games/./x.mp4", "'.'"),
        ("http://example.com/x.mp4", "URL"),
        ("s3:bucket/x.mp4", "URL"),
        ("file:x.mp4", "URL"),
        ("C:x.mp4", "URL"),
        ("-i", "'-'"),
        ("games\\x.mp4", "backslash"),
        ("games/x\x00.mp4", "control"),
        ("games/x\n.mp4", "control"),
        ("games//x.mp4", "empty segments"),
        ("games/", "empty segments"),
        ("x" * (MAX_KEY_BYTES + 1), "1024 bytes"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), "1024 bytes"),  # counted in bytes, not characters
    ],
)
def test_keys_a_source_may_not_have_each_with_a_reason(key: str, says: str) -> None:
    problem = source_key_problem(key)
    assert problem is not None and says in problem


def test_the_storage_settings_default_to_local_and_are_checked() -> None:
    settings = load({})
    assert (settings.storage, settings.s3_source_prefix, settings.s3_output_prefix, settings.s3_serve) == (
        "local", "sources/", "clips/", "redirect")  # fmt: skip
    s3 = load({"CLIPLOG_STORAGE": "s3", "CLIPLOG_S3_BUCKET": "games", "CLIPLOG_S3_OUTPUT_BUCKET": "game-clips",
               "CLIPLOG_S3_SOURCE_PREFIX": "raw", "CLIPLOG_S3_OUTPUT_PREFIX": "", "CLIPLOG_S3_PATH_STYLE": "yes",
               "CLIPLOG_S3_ENDPOINT": "http://minio:9000", "CLIPLOG_S3_SERVE": "proxy"})  # fmt: skip
    assert (s3.s3_bucket, s3.s3_output_bucket, s3.s3_source_prefix, s3.s3_output_prefix, s3.s3_path_style) == (
        "games", "game-clips", "raw/", "", True)  # fmt: skip
    assert (s3.s3_endpoint, s3.s3_serve, s3.s3_region) == ("http://minio:9000", "proxy", "us-east-1")
    for env, says in [
        ({"CLIPLOG_STORAGE": "s3"}, "CLIPLOG_S3_BUCKET"),
        ({"CLIPLOG_STORAGE": "gcs"}, "CLIPLOG_STORAGE"),
        ({"CLIPLOG_S3_SERVE": "stream"}, "CLIPLOG_S3_SERVE"),
        ({"CLIPLOG_S3_ENDPOINT": "minio:9000"}, "CLIPLOG_S3_ENDPOINT"),
        ({"CLIPLOG_S3_BUCKET": "Bad_Bucket"}, "CLIPLOG_S3_BUCKET"),
        ({"CLIPLOG_S3_SOURCE_PREFIX": "../up"}, "CLIPLOG_S3_SOURCE_PREFIX"),
        ({"CLIPLOG_S3_OUTPUT_PREFIX": "/abs"}, "CLIPLOG_S3_OUTPUT_PREFIX"),
        ({"CLIPLOG_S3_PATH_STYLE": "maybe"}, "CLIPLOG_S3_PATH_STYLE"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load(env)


class _Failure(Exception):
    pass


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Generic S3 error: Error performing GET ... Server returned non-2xx status code: 403 Forbidden", StorageDenied),
        ("Generic S3 error: ... Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>", StorageDenied),
        ("Object at location x not found: ... non-2xx status code: 404 Not Found", ObjectMissing),
        ("Generic S3 error: ... Server returned non-2xx status code: 503 Service Unavailable", StorageUnavailable),
        ("Generic S3 error: Error performing HEAD ... HTTP error: error sending request", StorageUnavailable),
        ("Generic S3 error: ... operation timed out", StorageUnavailable),
    ],
)
def test_a_store_failure_becomes_its_storage_error_naming_bucket_and_key(text: str, kind: type) -> None:
    error = storage_error(_Failure(text), "games", "sources/final.mp4", "reading")
    assert type(error) is kind
    assert "s3://games/sources/final.mp4" in error.message or "'games'" in error.message
    assert is_retryable(error.code) is (kind is StorageUnavailable)


def test_credentials_come_from_the_shared_file_only_when_the_environment_names_no_key(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = S\n[other]\naws_access_key_id = B\n"
                    "aws_secret_access_key = T\naws_session_token = X\n")  # fmt: skip
    assert shared_file_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(path)}) == {
        "access_key_id": "A", "secret_access_key": "S"}  # fmt: skip
    assert shared_file_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PROFILE": "other"}) == {
        "access_key_id": "B", "secret_access_key": "T", "session_token": "X"}  # fmt: skip
    assert shared_file_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_ACCESS_KEY_ID": "E"}) == {}
    assert shared_file_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}) == {}


def test_ffmpegs_words_about_a_presigned_url_never_carry_its_signature() -> None:
    from handlers.ffmpeg import _tail, remote, remote_input_options

    url = "http://127.0.0.1:9/b/sources/x.mp4?X-Amz-Credential=KEY&X-Amz-Signature=abc123"
    stderr = f"[http @ 0x55d1] HTTP error 403 Forbidden\n{url}: Server returned 403 Forbidden (access denied)\n".encode()
    said = _tail(stderr, path=remote(url, "x.mp4"))  # what an ExtractionError's message quotes
    assert "X-Amz" not in said and "abc123" not in said and "403 Forbidden" in said
    assert str(remote(url, "x.mp4")) == url  # what FFmpeg opens
    assert remote_input_options(frozenset({"request_size", "multiple_requests"}), 15.0) == {
        "rw_timeout": "15000000", "request_size": str(1024 * 1024), "multiple_requests": "1"}  # fmt: skip
    assert remote_input_options(frozenset(), None) == {}  # an FFmpeg without them gets none of them
