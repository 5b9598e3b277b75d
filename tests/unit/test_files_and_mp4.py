"""Pure-ish edges: serving ranges of a file, reading MP4 boxes, settings validation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from api.files import ranged_file
from handlers.mp4 import read_info
from runtime.settings import ConfigError, load


def test_ranges(tmp_path: Path) -> None:
    path = tmp_path / "f.mp4"
    path.write_bytes(bytes(range(256)) * 4)
    assert ranged_file(path, None).status_code in (None, 200)  # a Stream's default: 200
    partial = ranged_file(path, "bytes=10-19")
    assert partial.status_code == 206 and partial.headers["Content-Range"] == "bytes 10-19/1024"
    assert ranged_file(path, "bytes=-24").headers["Content-Range"] == "bytes 1000-1023/1024"
    assert ranged_file(path, "bytes=5000-").status_code == 416
    whole = ranged_file(path, "bytes=" + "9" * 5000 + "-")  # not a range we parse: the whole file
    assert whole.status_code in (None, 200) and whole.headers["Content-Length"] == "1024"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage" * 100,
        struct.pack(">I4s", 1, b"moov") + b"\x00\x00",  # a 64-bit size cut short
        struct.pack(">I4s", 16, b"moov") + struct.pack(">I4s", 8, b"mvhd"),  # an empty mvhd
        struct.pack(">I4s", 8, b"moov"),
    ],
)
def test_malformed_mp4_boxes_fall_back_to_ffmpeg(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    assert read_info(path) is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CLIPLOG_ATTEMPT_TIMEOUT": "nan"}, "finite"),
        ({"CLIPLOG_RETRY_MAX": "inf"}, "finite"),
        ({"CLIPLOG_MAX_ATTEMPTS": "two"}, "whole number"),
        ({"CLIPLOG_SLOW_AFTER": "-5"}, "greater than 0"),
        ({"CLIPLOG_HEARTBEAT_INTERVAL": "20"}, "shorter than CLIPLOG_LEASE_TIMEOUT"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(env)
