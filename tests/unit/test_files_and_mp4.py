"""Pure-ish edges: serving ranges of a file, reading MP4 boxes, settings validation."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.files import byte_range, local_file, not_modified, serve
from handlers import mp4
from handlers.mp4 import read_info
from runtime.settings import ConfigError, load


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=10-19", (10, 19)),
        ("bytes=-24", (1000, 1023)),
        ("bytes=1000-", (1000, 1023)),
        ("bytes=0-99999", (0, 1023)),  # a last-pos past the end is cut to the end
        ("bytes=-5000", (0, 1023)),  # a suffix longer than the file: the whole file
        (" BYTES = 3 - 4 ", (3, 4)),
        ("bytes=5000-", False),  # starts after the end
        ("bytes=1024-", False),
        ("bytes=5-2", False),  # last-pos before first-pos
        ("bytes=9999999-", False),
        ("bytes=-0", False),  # an empty suffix
        ("bytes=" + "9" * 5000 + "-", False),  # more digits than int() takes: still beyond the end
        ("bytes=0-" + "9" * 5000, (0, 1023)),
        ("bytes=-", None),
        ("bytes=0-1,5-6", None),  # several ranges: served whole
        ("items=0-1", None),
        ("bytes=x-y", None),
        ("", None),
    ],
)
def test_byte_range(header: str, expected: object) -> None:
    assert byte_range(header, 1024) == expected


def test_nothing_is_satisfiable_in_an_empty_file() -> None:
    assert byte_range("bytes=0-", 0) is False and byte_range("bytes=-1", 0) is False


@given(st.text(max_size=40) | st.from_regex(r"\Abytes=\d{0,25}-\d{0,25}\Z"), st.integers(0, 10**12))
def test_any_range_header_is_a_range_inside_the_file_or_a_clear_no(header: str, size: int) -> None:
    wanted = byte_range(header, size)
    if isinstance(wanted, tuple):
        start, end = wanted
        assert 0 <= start <= end < size
    else:
        assert wanted in (None, False)


MODIFIED = datetime(2026, 12, 1, 9, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"if-none-match": '"abc"'}, True),
        ({"if-none-match": 'W/"abc"'}, True),  # If-None-Match compares weakly
        ({"if-none-match": '"x", "abc"'}, True),
        ({"if-none-match": "*"}, True),
        ({"if-none-match": '"other"'}, False),
        ({"if-none-match": '"other"', "if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT"}, False),  # INM wins
        ({"if-modified-since": "Tue, 01 Dec 2026 09:00:00 GMT"}, True),
        ({"if-modified-since": "Tue, 01 Dec 2026 08:59:59 GMT"}, False),
        ({"if-modified-since": "not a date"}, False),
        ({}, False),
    ],
)
def test_not_modified(headers: dict[str, str], expected: bool) -> None:
    assert not_modified(headers, '"abc"', MODIFIED) is expected


def test_serve_answers_ranges_validators_and_if_range(tmp_path: Path) -> None:
    path = tmp_path / "f.mp4"
    path.write_bytes(bytes(range(256)) * 4)
    meta, read = local_file(path)
    whole = serve("GET", {}, meta, read)
    assert whole.status_code == 200 and whole.headers["Content-Length"] == "1024"
    assert whole.headers["ETag"] == meta.etag and whole.headers["Cache-Control"].startswith("private")
    partial = serve("GET", {"range": "bytes=10-19"}, meta, read)
    assert partial.status_code == 206 and partial.headers["Content-Range"] == "bytes 10-19/1024"
    refused = serve("GET", {"range": "bytes=5-2"}, meta, read)
    assert refused.status_code == 416 and refused.headers["Content-Range"] == "bytes */1024"
    assert serve("GET", {"range": "bytes=0-9", "if-range": meta.etag}, meta, read).status_code == 206
    assert serve("GET", {"range": "bytes=0-9", "if-range": '"old"'}, meta, read).status_code == 200
    assert serve("GET", {"range": "bytes=0-9", "if-range": "W/" + meta.etag}, meta, read).status_code == 200
    stamp = whole.headers["Last-Modified"]
    assert serve("GET", {"range": "bytes=0-9", "if-range": stamp}, meta, read).status_code == 206
    assert serve("GET", {"if-none-match": meta.etag}, meta, read).status_code == 304
    head = serve("HEAD", {"range": "bytes=0-9"}, meta, read)
    assert head.status_code == 206 and head.content == b"" and head.headers["Content-Length"] == "10"


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


async def test_a_remote_moov_box_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    box = lambda kind, body: struct.pack(">I4s", 8 + len(body), kind) + body  # noqa: E731
    data = box(b"ftyp", b"isom\0\0\0\0") + box(b"moov", box(b"free", b"x" * 64))
    parsed_in: list[threading.Thread] = []

    def info(moov: bytes | None) -> None:
        parsed_in.append(threading.current_thread())

    monkeypatch.setattr(mp4, "_info", info)

    async def read_at(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    assert await mp4.read_info_ranged(read_at, len(data)) is None
    assert parsed_in and parsed_in[0] is not threading.main_thread()
