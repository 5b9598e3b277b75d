"""The soak's checks: pure functions over what the run saw (the log, the clips' final rows, what each feed client
received, the output files' facts). Each returns a list of problems in words; an empty list means the check holds.
They take plain data, so `tests/unit/test_soak_checks.py` proves each one can fail.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Callable, Iterable, Mapping, Sequence

import msgspec

TERMINAL = ("completed", "failed", "cancelled")
OUTCOMES = ("extraction.completed", "extraction.failed", "extraction.timed_out", "extraction.cancelled")
NEEDS_START = ("extraction.completed", "extraction.failed", "extraction.timed_out")
MAX_LISTED = 5  # problems of one kind named one by one; the rest are counted

Key = tuple[str, str]  # (project_id, clip_id)


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the log, as the checks need it."""

    position: int
    project_id: str
    clip_id: str
    version: int
    type: str
    run: int
    attempt: int
    clip_status: str
    recorded_at: float  # seconds since the epoch
    detected_by: str | None = None  # extraction.timed_out only
    reason: str | None = None  # extraction.timed_out only: deadline, lease, stalled, user

    @property
    def key(self) -> Key:
        return (self.project_id, self.clip_id)


class FinalClip(msgspec.Struct, frozen=True, kw_only=True):
    """A clip's row in the projection once the system has settled."""

    project_id: str
    clip_id: str
    status: str
    attempt: int
    max_attempts: int
    error_code: str | None = None
    error_retryable: bool | None = None

    @property
    def key(self) -> Key:
        return (self.project_id, self.clip_id)


class OutputFacts(msgspec.Struct, frozen=True, kw_only=True):
    """A completed clip's file as found on disk, beside what the log says of it."""

    key: Key
    path: str
    expected_min: float  # the shortest and longest duration a correct cut can have
    expected_max: float
    recorded_bytes: int
    exists: bool
    size: int = 0
    whole: bool = False  # its top-level MP4 boxes cover the file exactly, with a moov and an mdat
    duration: float | None = None  # read from the file


def _listed(problems: list[str], limit: int = MAX_LISTED) -> list[str]:
    return problems if len(problems) <= limit else [*problems[:limit], f"... and {len(problems) - limit} more"]


def by_stream(events: Iterable[LoggedEvent]) -> dict[Key, list[LoggedEvent]]:
    streams: dict[Key, list[LoggedEvent]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e.position):
        streams[event.key].append(event)
    return streams


def check_versions(events: Sequence[LoggedEvent]) -> list[str]:
    """Versions of each stream are 1, 2, 3, ... in position order."""
    problems = []
    for (project, clip), stream in by_stream(events).items():
        versions = [e.version for e in stream]
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"{project}/{clip}: versions {versions} in position order")
    return _listed(problems)


def check_attempts(events: Sequence[LoggedEvent]) -> list[str]:
    """Per attempt (run, attempt) of a clip: exactly one `requested`, first; at most one `started`; at most one
    outcome, after the `started` it needs (a `cancelled` may end an attempt that never started); and every started
    attempt has its outcome."""
    problems = []
    for (project, clip), stream in by_stream(events).items():
        attempts: dict[tuple[int, int], list[str]] = defaultdict(list)
        for event in stream:
            attempts[(event.run, event.attempt)].append(event.type.removeprefix("extraction."))
        for (run, attempt), types in attempts.items():
            where = f"{project}/{clip} attempt {run}.{attempt}: {types}"
            outcomes = [t for t in types if f"extraction.{t}" in OUTCOMES]
            if types.count("requested") != 1 or types[0] != "requested":
                problems.append(f"{where}: not exactly one `requested`, first")
            if types.count("started") > 1:
                problems.append(f"{where}: more than one `started`")
            if len(outcomes) > 1:
                problems.append(f"{where}: more than one outcome")
            if "started" in types and not outcomes:
                problems.append(f"{where}: started but has no outcome")
            for outcome in outcomes:
                if f"extraction.{outcome}" in NEEDS_START and (
                    "started" not in types or types.index("started") > types.index(outcome)
                ):
                    problems.append(f"{where}: `{outcome}` without a `started` before it")
    return _listed(problems)


def check_final_states(clips: Sequence[FinalClip]) -> list[str]:
    """Every clip is completed, cancelled, or failed with an error after its budget or a non-retryable error."""
    problems = []
    for clip in clips:
        where = f"{clip.project_id}/{clip.clip_id}"
        if clip.status not in TERMINAL:
            problems.append(f"{where} is still {clip.status} (attempt {clip.attempt}): stuck")
        elif clip.status == "failed":
            if clip.error_code is None:
                problems.append(f"{where} failed without an error")
            elif clip.error_retryable and clip.attempt < clip.max_attempts:
                problems.append(
                    f"{where} failed with a retryable error ({clip.error_code}) after {clip.attempt} of "
                    f"{clip.max_attempts} attempts"
                )
    return _listed(problems)


def check_registered(registered: Iterable[Key], logged: Iterable[Key], clips: Iterable[Key]) -> list[str]:
    """Every clip the API accepted is in the log and in the projection, and nothing else is."""
    registered, logged, clips = set(registered), set(logged), set(clips)
    problems = [f"{p}/{c} was accepted but is not in the log" for p, c in sorted(registered - logged)]
    problems += [f"{p}/{c} is in the log but was never accepted" for p, c in sorted(logged - registered)]
    problems += [f"{p}/{c} is in the log but has no clip row" for p, c in sorted(logged - clips)]
    return _listed(problems)


def check_feed(name: str, received: Sequence[LoggedEvent], expected: Sequence[LoggedEvent]) -> list[str]:
    """`received` (what one client got, in arrival order) is exactly `expected` (its user's part of the log, in
    position order): each event once, in order, nothing of another user's, the same content."""
    got = [e.position for e in received]
    want = [e.position for e in expected]
    if got == want:
        changed = [g.position for g, w in zip(received, expected) if _content(g) != _content(w)]
        return [f"{name}: events differ from the log at positions {changed[:MAX_LISTED]}"] if changed else []
    problems = []
    duplicates = sorted(p for p, n in Counter(got).items() if n > 1)
    if duplicates:
        problems.append(f"{name}: received {len(duplicates)} event(s) more than once, e.g. positions {duplicates[:5]}")
    foreign = sorted(set(got) - set(want))
    if foreign:
        problems.append(f"{name}: received {len(foreign)} event(s) not of its user, e.g. positions {foreign[:5]}")
    missing = sorted(set(want) - set(got))
    if missing:
        problems.append(f"{name}: missed {len(missing)} of {len(want)} event(s), e.g. positions {missing[:5]}")
    backwards = [b for a, b in zip(got, got[1:]) if b <= a]
    if backwards:
        problems.append(f"{name}: {len(backwards)} event(s) out of position order, e.g. position {backwards[0]}")
    return problems or [f"{name}: received {len(got)} events where the log has {len(want)}"]


def _content(event: LoggedEvent) -> dict:
    return {f: getattr(event, f) for f in ("project_id", "clip_id", "version", "type", "clip_status")}


def check_outputs(outputs: Sequence[OutputFacts]) -> list[str]:
    """Every completed clip's file exists, is whole, has the recorded size and a duration a correct cut can have."""
    problems = []
    for facts in outputs:
        where = f"{facts.key[0]}/{facts.key[1]} ({facts.path})"
        if not facts.exists:
            problems.append(f"{where}: the file does not exist")
        elif not facts.whole:
            problems.append(f"{where}: the file is not a whole MP4")
        elif facts.size != facts.recorded_bytes:
            problems.append(f"{where}: {facts.size} bytes on disk, {facts.recorded_bytes} recorded")
        elif facts.duration is None or not facts.expected_min <= facts.duration <= facts.expected_max:
            problems.append(
                f"{where}: lasts {facts.duration} s, expected {facts.expected_min:.2f}-{facts.expected_max:.2f} s"
            )
    return _listed(problems)


TEMPORARY = re.compile(r"^\.tmp-(?P<clip>[A-Za-z0-9_-]+)\.r(?P<run>\d+)a(?P<attempt>\d+)\.[0-9a-f]+\.mp4$")


def check_leftover_files(
    files: Iterable[str], completed_outputs: Iterable[str], events: Sequence[LoggedEvent]
) -> tuple[list[str], list[str]]:
    """Files under the output root (paths relative to it) that are neither a completed clip's output nor allowed.

    A temporary file is allowed only while its attempt's worker was lost (timed out by the reaper: a SIGKILLed
    worker cannot remove it; the reaper sweeps it once it is older than any attempt may live). Returns (problems,
    the temporaries awaiting that sweep)."""
    lost = {(e.project_id, e.clip_id, e.run, e.attempt) for e in events
            if e.type == "extraction.timed_out" and e.detected_by == "reaper"}  # fmt: skip
    completed = set(completed_outputs)
    problems, awaiting = [], []
    for path in sorted(files):
        if path in completed:
            continue
        project, _, name = path.rpartition("/")
        match = TEMPORARY.match(name)
        if match is None:
            problems.append(f"{path}: an orphan output (no completed clip points at it)")
        elif (project, match["clip"], int(match["run"]), int(match["attempt"])) in lost:
            awaiting.append(path)
        else:
            problems.append(f"{path}: a temporary file left by an attempt whose worker was not lost")
    return _listed(problems), awaiting


# Stuck time ------------------------------------------------------------------------------------------------------


class Gap(msgspec.Struct, frozen=True):
    """The longest a clip waited in one status without a new event."""

    key: Key
    status: str
    seconds: float


def longest_gaps(events: Sequence[LoggedEvent], settled_at: float) -> dict[str, Gap]:
    """Per waiting status (a non-terminal status after an event), the longest time until the clip's next event, or
    until `settled_at` when no event followed."""
    longest: dict[str, Gap] = {}
    for key, stream in by_stream(events).items():
        for event, following in zip(stream, [*stream[1:], None]):
            if event.clip_status in TERMINAL:
                continue  # a person's move (a retry after `failed`) is not the system's wait
            until = following.recorded_at if following is not None else settled_at
            gap = Gap(key, event.clip_status, max(0.0, until - event.recorded_at))
            if gap.status not in longest or gap.seconds > longest[gap.status].seconds:
                longest[gap.status] = gap
    return longest


class Bound(msgspec.Struct, frozen=True):
    seconds: float
    promise: str
    enforced: bool = True  # False: the wait also depends on load (a queue's length), so it is reported only


def check_gaps(gaps: Mapping[str, Gap], bounds: Mapping[str, Bound], slack: float) -> list[str]:
    """A clip waited longer in a status than that status promises (plus `slack` for the faults' own outages)."""
    problems = []
    for status, gap in sorted(gaps.items()):
        bound = bounds.get(status)
        if bound is not None and bound.enforced and gap.seconds > bound.seconds + slack:
            problems.append(
                f"{gap.key[0]}/{gap.key[1]} was {status} for {gap.seconds:.1f} s without progress; "
                f"the bound is {bound.seconds:g} s ({bound.promise}) + {slack:g} s of slack"
            )
    return problems


def feed_delays(
    arrivals: Iterable[tuple[int, float]], recorded: Mapping[int, float], windows: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Commit-to-arrival delays of `(position, arrived at)` pairs (both clocks: seconds since the epoch), all of them
    and those of events recorded inside one of `windows` (e.g. while an unrelated transaction was held open)."""
    every, inside = [], []
    for position, arrived in arrivals:
        at = recorded.get(position)
        if at is None:
            continue
        every.append(arrived - at)
        if any(start <= at <= end for start, end in windows):
            inside.append(arrived - at)
    return sorted(every), sorted(inside)


def most_running_at_once(events: Sequence[LoggedEvent], group: Callable[[LoggedEvent], str]) -> dict[str, int]:
    """Per group (e.g. project, or owner), the most attempts the log shows running at the same time: from each
    `started` to its attempt's ending (an attempt lost with its worker counts until the reaper ends it, as the
    dispatcher counts it)."""
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    started: set[tuple[str, str, int, int]] = set()
    for event in sorted(events, key=lambda e: e.position):
        attempt = (event.project_id, event.clip_id, event.run, event.attempt)
        if event.type == "extraction.started":
            started.add(attempt)
            running[group(event)] += 1
            most[group(event)] = max(most[group(event)], running[group(event)])
        elif event.type in OUTCOMES and attempt in started:
            started.discard(attempt)
            running[group(event)] -= 1
    return dict(most)
