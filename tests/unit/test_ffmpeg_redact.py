"""What a failed attempt shows of its FFmpeg run: the arguments and stderr without secrets (a presigned URL's
signature, credentials in a URL) or the roots' absolute paths, and only stderr's last 20 lines."""

from __future__ import annotations

from pathlib import Path

from handlers.ffmpeg import STDERR_TAIL_LINES, Shown, cut_command, redact, stderr_tail

PRESIGNED = (
    "https://cliplog.s3.eu-west-1.amazonaws.com/sources/games/match.mp4"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261201&X-Amz-Signature=0123abcd"
)
SHOWN = Shown({"/srv/cliplog/media": "$CLIPLOG_MEDIA_ROOT", "/srv/cliplog/clips/": "$CLIPLOG_OUTPUT_ROOT"})


def test_a_presigned_urls_query_string_and_a_urls_credentials_are_redacted() -> None:
    shown = redact(["/usr/bin/ffmpeg", "-i", PRESIGNED, "-i", "ftp://user:hunter2@host/a.mp4#frag", "out.mp4"])
    assert shown == [
        "ffmpeg", "-i", "https://cliplog.s3.eu-west-1.amazonaws.com/sources/games/match.mp4?[redacted]",
        "-i", "ftp://host/a.mp4?[redacted]", "out.mp4",
    ]
    text = " ".join(shown)
    for secret in ("X-Amz-Signature", "0123abcd", "AKIAEXAMPLE", "hunter2", "user:"):
        assert secret not in text


def test_the_cut_command_names_the_roots_instead_of_their_absolute_paths() -> None:
    args = cut_command(
        "/opt/ffmpeg/bin/ffmpeg", Path("/srv/cliplog/media/games/match.mp4"), 5.0, 9.0, "copy",
        Path("/srv/cliplog/clips/p1/.tmp-c1.r1a1.ab.mp4"),
    )
    shown = redact(args, SHOWN)
    assert shown[0] == "ffmpeg" and len(shown) == len(args)
    assert "$CLIPLOG_MEDIA_ROOT/games/match.mp4" in shown and "$CLIPLOG_OUTPUT_ROOT/p1/.tmp-c1.r1a1.ab.mp4" in shown
    assert not any("/srv/" in arg for arg in shown)
    assert [a for a in shown[1:] if "$CLIPLOG" not in a] == [a for a in args[1:] if "/srv/" not in a]


def test_the_stderr_tail_is_the_last_20_lines_redacted_and_none_when_silent() -> None:
    stderr = "".join(f"frame={n}\n" for n in range(100)) + f"[https @ 0x55d1] {PRESIGNED}: Server returned 403\n"
    tail = stderr_tail(stderr.encode(), SHOWN)
    assert tail is not None
    lines = tail.split("\n")
    assert len(lines) == STDERR_TAIL_LINES == 20
    assert lines[0] == "frame=81" and lines[-1].endswith("match.mp4?[redacted]: Server returned 403")
    assert "X-Amz" not in tail
    assert stderr_tail(b"/srv/cliplog/media/games/x.mp4: Invalid data\n", SHOWN) == "$CLIPLOG_MEDIA_ROOT/games/x.mp4: Invalid data"
    assert stderr_tail(b"") is None and stderr_tail(b"\n\n") is None
    assert stderr_tail(b"bad \xff byte") == "bad \ufffd byte"
