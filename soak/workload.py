"""What the soak asks of the system: users and projects, the clip behaviours (a source folder the FFmpeg wrapper
acts on, what the clip should end as, what a simulated person does to it), and the clients that register the clips
and act as that person through the API, retrying through the faults as a real client would.

A new capability is a new `Behaviour` in BEHAVIOURS (and, when it needs one, a branch of the FFmpeg wrapper).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any, Callable

import httpx
import msgspec

from domain.clip import Register

USERS: dict[str, tuple[str, ...]] = {"alice": ("a1", "a2", "a3"), "bob": ("b1", "b2"), "carol": ("c1", "c2")}
SOURCE_SECONDS = 30  # the generated source: one keyframe a second exactly (no scene-cut keyframes)


class Behaviour(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    weight: float
    folder: str = "good"  # the source's folder under the media root; the wrapper recognises it in FFmpeg's arguments
    source: str = "match.mp4"
    wrapper: str = ""  # shell run before the real FFmpeg for a cut of a source in `folder` ("" = none)
    expect: str = "completed"
    code: str | None = None  # the error code an expected failure ends with
    past_end: bool = False  # a range that starts after the source ends
    person: tuple[tuple[str, tuple[str, ...]], ...] = ()  # what a person does, in turn: (action, once in one of these)
    fields: tuple[tuple[str, str], ...] = ()  # more fields of the registration's body
    needs: str | None = None  # a field of domain.clip.Register this behaviour needs (a capability not everywhere yet)

    @property
    def available(self) -> bool:
        return self.needs is None or self.needs in Register.__struct_fields__


ONCE = 'case "$*" in *.r1a1.*) {} ;; esac'  # only the first attempt of the first run
FIRST_RUN = 'case "$*" in *.r1a*) {} ;; esac'  # every attempt of the first run
HANG = "exec sleep 600"
CRASH = "kill -9 $$"
EXIT = 'echo "soak: simulated encoder error" >&2; exit 1'

BEHAVIOURS: list[Behaviour] = [
    Behaviour(name="ok", weight=62),
    Behaviour(name="hang-once", weight=4, folder="hang-once", wrapper=ONCE.format(HANG)),
    Behaviour(name="crash-once", weight=4, folder="crash-once", wrapper=ONCE.format(CRASH)),
    Behaviour(name="exit-once", weight=4, folder="exit-once", wrapper=ONCE.format(EXIT)),
    Behaviour(name="hang-always", weight=1.5, folder="hang-always", wrapper=HANG, expect="failed", code="timed_out"),
    Behaviour(name="exit-always", weight=2, folder="exit-always", wrapper=EXIT, expect="failed", code="ffmpeg_exit"),
    Behaviour(name="not-a-video", weight=2, folder="bad", source="broken.mp4", expect="failed", code="not_a_video"),
    Behaviour(name="past-the-end", weight=2, past_end=True, expect="failed", code="range_past_end"),
    # Fails every attempt of its first run; the person's retry starts run 2, which succeeds.
    Behaviour(name="person-retry", weight=3, folder="person-retry", wrapper=FIRST_RUN.format(EXIT),
              person=(("retry", ("failed",)),)),
    # A person cancels a clip that waits or hangs; one of them retries it afterwards, and its second run succeeds.
    Behaviour(name="cancel-waiting", weight=2, folder="hang-always", expect="cancelled",
              person=(("cancel", ("pending", "retrying")),)),
    Behaviour(name="cancel-running", weight=2, folder="hang-always", expect="cancelled",
              person=(("cancel", ("running",)),)),
    Behaviour(name="cancel-then-retry", weight=2, folder="cancel-then-retry", wrapper=FIRST_RUN.format(HANG),
              person=(("cancel", ("running",)), ("retry", ("cancelled",)))),
    # A real FFmpeg frozen (SIGSTOP) mid-cut on the first attempt: stall detection, where it exists, or the
    # deadline stops it; the second attempt succeeds.
    Behaviour(name="freeze-once", weight=3, folder="freeze-once", fields=(("mode", "accurate"),),
              wrapper=ONCE.format('"$REAL" "$@" & p=$!; sleep 0.1; kill -STOP $p; wait $p; exit $?')),
    # Fair dispatch: batch clips wait behind interactive ones, but are never starved.
    Behaviour(name="batch", weight=12, fields=(("priority", "batch"),), needs="priority"),
]  # fmt: skip
BEHAVIOURS = [b for b in BEHAVIOURS if b.available]


def ffmpeg_wrapper(behaviours: list[Behaviour]) -> str:
    """The body of the workers' FFmpeg wrapper (runtime.processes.Cluster.wrapper): each behaviour's branch runs
    for a cut (`-f mp4`) of a source in its folder; probes and everything else run the real FFmpeg."""
    branches = "".join(f"    */{b.folder}/*) {b.wrapper} ;;\n" for b in behaviours if b.wrapper)
    return f'case "$*" in *"-f mp4"*)\n  case "$*" in\n{branches}  esac ;;\nesac\nexec "$REAL" "$@"\n'


class PlannedClip(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    project_id: str
    clip_id: str
    behaviour: str
    body: dict[str, Any]
    at: float  # seconds after the workload starts


def plan_clips(rng: random.Random, count: int, spread: float, behaviours: list[Behaviour]) -> list[PlannedClip]:
    """`count` clips over `spread` seconds, behaviours by weight, a quarter of them frame-accurate."""
    projects = [(user, project) for user, owned in USERS.items() for project in owned]
    chosen = rng.choices(behaviours, weights=[b.weight for b in behaviours], k=count)
    clips = []
    for index, behaviour in enumerate(chosen):
        user, project = rng.choice(projects)
        start = round(rng.uniform(SOURCE_SECONDS + 2, SOURCE_SECONDS + 10), 1) if behaviour.past_end else round(
            rng.uniform(0, SOURCE_SECONDS - 6), 1
        )
        body = {
            "clip_id": f"k{index:04d}-{behaviour.name}",
            "source": f"{behaviour.folder}/{behaviour.source}",
            "start": start,
            "end": round(start + rng.uniform(1, 4), 1),
            "mode": "accurate" if rng.random() < 0.25 else "copy",
            **dict(behaviour.fields),
        }
        clips.append(PlannedClip(user=user, project_id=project, clip_id=body["clip_id"], behaviour=behaviour.name,
                                 body=body, at=spread * index / max(1, count)))  # fmt: skip
    return clips


class ApiClients:
    """One HTTP client per user; each request goes to one of the API instances at random (as a load balancer
    would), and `call` retries through connection errors and 503s until `give_up` seconds have passed."""

    def __init__(self, urls: Callable[[], list[str]], tokens: dict[str, str], rng: random.Random) -> None:
        self.urls = urls
        self.rng = rng
        self.http = {u: httpx.AsyncClient(headers={"Authorization": f"Bearer {t}"}, timeout=10) for u, t in tokens.items()}
        self.statuses: Counter[int] = Counter()  # every answer seen, 503s included
        self.errors = 0  # connection errors (an API instance down or killed mid-request)

    async def call(self, user: str, method: str, path: str, give_up: float = 90, **kwargs: Any) -> httpx.Response | None:
        deadline = time.monotonic() + give_up
        while True:
            try:
                response = await self.http[user].request(method, self.rng.choice(self.urls()) + path, **kwargs)
                self.statuses[response.status_code] += 1
                if response.status_code != 503:
                    return response
            except httpx.HTTPError:
                self.errors += 1
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2 + self.rng.random() * 0.3)

    async def close(self) -> None:
        for client in self.http.values():
            await client.aclose()


class Workload:
    """Registers the planned clips on time, acts as the person for those that need one, and sends requests that
    must be refused (a missing source: 400; another user's project: 404). Everything unexpected is a problem."""

    def __init__(self, clients: ApiClients, clips: list[PlannedClip], behaviours: list[Behaviour]) -> None:
        self.clients = clients
        self.clips = clips
        self.behaviours = {b.name: b for b in behaviours}
        self.accepted: dict[tuple[str, str], PlannedClip] = {}
        self.problems: list[str] = []
        self.person_actions: Counter[str] = Counter()
        self.refused: Counter[int] = Counter()
        self.pending_people: set[tuple[str, str]] = set()  # clips a person still has to act on
        self.people: list[asyncio.Task] = []  # cancelled by the soak once it has settled
        self._tasks: list[asyncio.Task] = []

    async def register_all(self, began: float) -> None:
        for clip in self.clips:
            await asyncio.sleep(max(0.0, began + clip.at - time.monotonic()))
            self._tasks.append(asyncio.create_task(self._register(clip)))
        await asyncio.gather(*self._tasks)

    async def _register(self, clip: PlannedClip) -> None:
        path = f"/api/clips/projects/{clip.project_id}/clips"
        response = await self.clients.call(clip.user, "POST", path, json=clip.body)
        if response is None or response.status_code not in (200, 201):
            answer = "no answer" if response is None else f"{response.status_code} {response.text[:200]}"
            self.problems.append(f"registering {clip.project_id}/{clip.clip_id}: {answer}")
            return
        self.accepted[(clip.project_id, clip.clip_id)] = clip
        steps = self.behaviours[clip.behaviour].person
        if steps:
            self.pending_people.add((clip.project_id, clip.clip_id))
            self.people.append(asyncio.create_task(self._act(clip, steps)))

    async def _act(self, clip: PlannedClip, steps: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        """A person watching the clip (through the API) does each step once the clip is in one of its statuses;
        a step whose moment has passed (the clip ended otherwise first) is counted as missed."""
        path = f"/api/clips/projects/{clip.project_id}/clips/{clip.clip_id}"
        run = 1
        for action, when in steps:
            while True:
                response = await self.clients.call(clip.user, "GET", path)
                state = response.json() if response is not None and response.status_code == 200 else None
                if state is None:
                    await asyncio.sleep(0.3)
                    continue
                if (action == "retry" and state["run"] > run) or (action == "cancel" and state["status"] == "cancelled"):
                    break  # done already: an earlier request landed although its answer was lost
                if state["status"] in when:
                    route = "retry-extraction" if action == "retry" else "cancel"
                    answer = await self.clients.call(clip.user, "POST", f"{path}/{route}")
                    if answer is not None and answer.status_code in (200, 202):
                        self.person_actions[action] += 1
                        break
                    if answer is None or answer.status_code != 409:  # 409: the clip moved on meanwhile
                        self.problems.append(f"{action} {clip.project_id}/{clip.clip_id}: {answer and answer.status_code}")
                        break
                elif state["status"] in ("completed", "failed", "cancelled"):
                    self.person_actions[f"{action} missed"] += 1
                    self.pending_people.discard((clip.project_id, clip.clip_id))
                    return
                await asyncio.sleep(0.3)
            run = state["run"] if action != "retry" else state["run"] + 1
        self.pending_people.discard((clip.project_id, clip.clip_id))

    async def refused_requests(self, rng: random.Random, stop: asyncio.Event) -> None:
        """Every few seconds a request that must be refused, and be refused with the right status."""
        index = 0
        while not stop.is_set():
            await asyncio.sleep(1 + rng.random() * 3)
            user, other = rng.sample(sorted(USERS), 2)
            claimed = [k[0] for k, c in self.accepted.items() if c.user == other]
            index += 1
            if index % 2 and claimed:
                project, expected = rng.choice(claimed), 404  # another user's project
                body = {"clip_id": f"intruder-{index}", "source": "good/match.mp4", "start": 1, "end": 2}
            else:
                project, expected = rng.choice(USERS[user]), 400  # a source that does not exist
                body = {"clip_id": f"missing-{index}", "source": "nowhere/none.mp4", "start": 1, "end": 2}
            response = await self.clients.call(user, "POST", f"/api/clips/projects/{project}/clips", json=body)
            if response is None:
                continue
            self.refused[response.status_code] += 1
            if response.status_code != expected:
                self.problems.append(f"{user} POST {project}/{body['clip_id']}: {response.status_code}, not {expected}")

    def expected(self, key: tuple[str, str]) -> Behaviour:
        return self.behaviours[self.accepted[key].behaviour]
