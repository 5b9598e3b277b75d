// What a clip shows (api/static/clip-state.js) and its timeline's attempts (api/static/timeline.js), under node's test
// runner: `node --test tests/js` (tests/ui/test_js.py runs this file from pytest).

import assert from "node:assert/strict";
import { test } from "node:test";

import { clipState, commandLine, errorSentence, formatCountdown, formatDuration, KINDS, STATUSES } from "../../api/static/clip-state.js";
import { attemptsFrom, describeAttempt } from "../../api/static/timeline.js";

const T0 = Date.parse("2026-11-28T12:00:00Z");
const at = (seconds) => new Date(T0 + seconds * 1000).toISOString();
const config = { slow_after: 300 };

function clip(fields) {
  return {
    clip_id: "c1",
    status: "pending",
    slow: false,
    run: 1,
    attempt: 1,
    max_attempts: 3,
    next_retry_at: null,
    started_at: null,
    status_since: at(0),
    last_error: null,
    file_url: null,
    version: 1,
    ...fields,
  };
}

test("pending: waiting, then taking longer than expected after slow_after, with a retry", () => {
  let state = clipState(clip({}), T0 + 299_000, config);
  assert.equal(state.kind, "waiting");
  assert.equal(state.label, "Waiting for extraction");
  assert.equal(state.busy, true);
  assert.equal(state.canRetry, false);
  state = clipState(clip({}), T0 + 301_000, config);
  assert.equal(state.kind, "slow");
  assert.equal(state.label, "Taking longer than expected");
  assert.equal(state.busy, false, "no spinner once it is slow");
  assert.equal(state.canRetry, true);
  assert.match(state.detail, /Waiting for a worker for 5:01/);
});

test("running: extracting with the elapsed time since it started; slow by the server's flag or the page's clock", () => {
  const running = clip({ status: "running", started_at: at(10), status_since: at(10) });
  let state = clipState(running, T0 + 75_000, config);
  assert.equal(state.kind, "extracting");
  assert.equal(state.label, "Extracting…");
  assert.equal(state.time, "1:05");
  assert.equal(clipState(running, T0 + 311_000, config).kind, "slow");
  state = clipState({ ...running, slow: true }, T0 + 20_000, config);
  assert.equal(state.kind, "slow", "the server says so: trust it even if the page's clock is behind");
  assert.equal(clipState(running, T0, config).time, "0:00", "a clock behind the server's never shows negative time");
});

test("retrying: counts down to next_retry_at, then says now; overdue by slow_after it is slow", () => {
  const retrying = clip({
    status: "retrying",
    attempt: 2,
    next_retry_at: at(60),
    last_error: { code: "timed_out", message: "took too long", retryable: true },
  });
  let state = clipState(retrying, T0 + 52_500, config);
  assert.equal(state.kind, "retrying");
  assert.equal(state.label, "Retrying: attempt 2 of 3 in 8s");
  assert.equal(state.canRetryNow, true);
  assert.equal(state.canRetry, false);
  assert.equal(state.error, "took too long");
  assert.equal(clipState(retrying, T0 - 100_000, config).label, "Retrying: attempt 2 of 3 in 2m 40s");
  assert.equal(clipState(retrying, T0 + 61_000, config).label, "Retrying: attempt 2 of 3 now");
  state = clipState(retrying, T0 + 361_000, config);
  assert.equal(state.kind, "slow");
  assert.equal(state.canRetry, true);
});

test("failed: the error in words, the service's message, advice and a retry", () => {
  const failed = clip({
    status: "failed",
    last_error: { code: "not_a_video", message: "broken.mp4 is not a video FFmpeg can read", retryable: false },
  });
  const state = clipState(failed, T0, config);
  assert.equal(state.kind, "failed");
  assert.equal(state.label, "Extraction failed");
  assert.match(state.detail, /not a video that can be cut/);
  assert.equal(state.error, "broken.mp4 is not a video FFmpeg can read");
  assert.match(state.advice, /Replace the file/);
  assert.equal(state.canRetry, true);
  assert.equal(state.busy, false);
  const exhausted = clip({
    status: "failed",
    attempt: 3,
    last_error: { code: "ffmpeg_exit", message: "exit 1", retryable: true },
  });
  assert.match(clipState(exhausted, T0, config).advice, /All 3 attempts failed/);
  assert.equal(errorSentence({ code: "something_new" }), "The extraction did not succeed.");
});

test("completed: extracted, nothing to retry; every status maps to exactly one known kind", () => {
  const state = clipState(clip({ status: "completed", duration_seconds: 4.04, file_url: "/f" }), T0, config);
  assert.equal(state.kind, "extracted");
  assert.equal(state.label, "Extracted");
  assert.equal(state.detail, "4.0 s clip");
  assert.equal(state.canRetry || state.canRetryNow || state.busy, false);
  for (const status of STATUSES) {
    for (const seconds of [0, 100, 299, 301, 10_000]) {
      const kind = clipState(clip({ status, next_retry_at: at(30) }), T0 + seconds * 1000, config).kind;
      assert.ok(KINDS.includes(kind), `${status} at ${seconds} s: ${kind}`);
      if (seconds > 400) assert.ok(!["waiting", "extracting", "retrying"].includes(kind), "no unbounded spinner");
    }
  }
});

test("a status the page does not know is not shown as waiting", () => {
  const state = clipState(clip({ status: "processing" }), T0, config);
  assert.equal(state.label, "Unknown state: processing");
  assert.equal(state.busy, false);
});

test("durations and countdowns", () => {
  assert.equal(formatDuration(7.9), "0:07");
  assert.equal(formatDuration(3723), "1:02:03");
  assert.equal(formatCountdown(0.2), "1s");
  assert.equal(formatCountdown(61), "1m 1s");
});

test("the timeline: one entry per attempt with its outcome, duration and error; a replaced attempt says so", () => {
  const events = [
    { type: "extraction.requested", recorded_at: at(0), data: { run: 1, attempt: 1, reason: "registered", not_before: at(0), max_attempts: 3 } },
    { type: "extraction.started", recorded_at: at(1), data: { run: 1, attempt: 1 } },
    { type: "extraction.timed_out", recorded_at: at(16), data: { run: 1, attempt: 1, detected_by: "worker", elapsed_seconds: 15 } },
    { type: "extraction.requested", recorded_at: at(16), data: { run: 1, attempt: 2, reason: "auto_retry", not_before: at(26), max_attempts: 3 } },
    { type: "extraction.requested", recorded_at: at(20), data: { run: 2, attempt: 1, reason: "manual_retry", not_before: at(20), max_attempts: 3 } },
    { type: "extraction.started", recorded_at: at(21), data: { run: 2, attempt: 1 } },
    { type: "extraction.failed", recorded_at: at(22), data: { run: 2, attempt: 1, code: "ffmpeg_exit", message: "FFmpeg exited with code 1", elapsed_seconds: 0.8 } },
  ];
  const attempts = attemptsFrom(events);
  assert.equal(attempts.length, 3);
  const [first, second, third] = attempts.map((a) => describeAttempt(a, T0 + 30_000));
  assert.equal(first, "Run 1, attempt 1 of 3 (requested when the clip was added): timed out after 15 s: it ran past the time allowed for one attempt and was stopped");
  assert.equal(second, "Run 1, attempt 2 of 3 (automatic retry): not started: replaced by a retry");
  assert.match(third, /^Run 2, attempt 1 of 3 \(retried by a person\): failed after 0\.8 s: The video cutter \(FFmpeg\) stopped with an error/);
  assert.match(third, /The service said: “FFmpeg exited with code 1”/);
});

test("a running clip shows its progress and ETA; without progress, or not running, none", () => {
  const running = clip({ status: "running", started_at: at(0), progress: { percent: 42.7, speed: 2, eta_seconds: 3.2, updated_at: at(1) } });
  assert.deepEqual(clipState(running, T0 + 2_000, config).progress, { percent: 42.7, text: "42% · about 4s left" });
  assert.equal(clipState({ ...running, progress: null }, T0 + 2_000, config).progress, null);
  const noEta = { ...running, progress: { percent: 120, speed: null, eta_seconds: null } };
  assert.deepEqual(clipState(noEta, T0 + 2_000, config).progress, { percent: 100, text: "100%" });
  assert.equal(clipState({ ...running, status: "completed" }, T0 + 2_000, config).progress, null);
  assert.match(clipState(running, T0 + 2_000, config).label, /^Extracting…$/, "the label keeps its words");
});

test("a pending clip says where it is in the queue, and when it may be ready", () => {
  assert.equal(clipState(clip({ queue_position: 0 }), T0, config).detail, "Next in the queue");
  assert.equal(clipState(clip({ queue_position: 1, queue_eta_seconds: 12 }), T0, config).detail, "1 clip ahead of it in the queue · ready in about 12s");
  assert.equal(clipState(clip({ queue_position: 3 }), T0, config).detail, "3 clips ahead of it in the queue");
  assert.equal(clipState(clip({}), T0, config).detail, null, "an older server sends no position");
  assert.equal(clipState(clip({ queue_position: 2 }), T0, config).label, "Waiting for extraction");
});

test("the timeline says why an attempt timed out, by its reason; events without one by who noticed", () => {
  const base = [
    { type: "extraction.requested", recorded_at: at(0), data: { run: 1, attempt: 1, reason: "registered", not_before: at(0), max_attempts: 3 } },
    { type: "extraction.started", recorded_at: at(1), data: { run: 1, attempt: 1 } },
  ];
  const timedOut = (data) => [...base, { type: "extraction.timed_out", recorded_at: at(5), data: { run: 1, attempt: 1, elapsed_seconds: 4, ...data } }];
  const describe = (data) => describeAttempt(attemptsFrom(timedOut(data))[0], T0 + 10_000);
  assert.match(describe({ detected_by: "worker", reason: "stalled" }), /timed out after 4\.0 s: FFmpeg stopped making progress, so it was stopped$/);
  assert.match(describe({ detected_by: "reaper", reason: "lease" }), /: its worker stopped responding, so it was given up$/);
  assert.match(describe({ detected_by: "reaper", reason: "deadline" }), /: it ran past the time allowed for one attempt and was stopped$/);
  assert.match(describe({ detected_by: "user", reason: "user" }), /: it was taking longer than expected and a person retried it$/);
  assert.match(describe({ detected_by: "reaper" }), /: it passed its deadline or its worker stopped responding, so it was given up$/);
});

test("cancel: offered on pending, running, retrying and slow clips; a cancelled clip offers a retry", () => {
  const offered = (fields, seconds = 10) => clipState(clip(fields), T0 + seconds * 1000, config).canCancel;
  assert.equal(offered({ status: "pending" }), true);
  assert.equal(offered({ status: "pending" }, 301), true); // slow, and still cancellable
  assert.equal(offered({ status: "running", started_at: at(0) }), true);
  assert.equal(offered({ status: "retrying", next_retry_at: at(30) }), true);
  for (const status of ["completed", "failed", "cancelled", "processing"]) assert.equal(offered({ status }), false, status);
  const error = { code: "timed_out", message: "took too long", retryable: true };
  const state = clipState(clip({ status: "cancelled", last_error: error }), T0, config);
  assert.equal(state.kind, "cancelled");
  assert.equal(state.label, "Cancelled");
  assert.match(state.detail, /cancelled/);
  assert.equal(state.canRetry, true);
  assert.equal(state.canRetryNow || state.canCancel || state.busy, false);
  for (const seconds of [0, 10_000]) assert.equal(clipState(clip({ status: "cancelled" }), T0 + seconds * 1000, config).kind, "cancelled");
});

test("details: the error's command as a shell line and FFmpeg's last lines, only with an error that has them", () => {
  const error = {
    code: "ffmpeg_exit",
    message: "FFmpeg exited with code 1",
    retryable: true,
    command: ["ffmpeg", "-ss", "5.000", "-i", "$CLIPLOG_MEDIA_ROOT/games/my match.mp4", "it's.mp4"],
    stderr_tail: "line 1\nline 2",
  };
  const failed = clipState(clip({ status: "failed", last_error: error }), T0, config);
  assert.deepEqual(failed.details, {
    command: "ffmpeg -ss 5.000 -i '$CLIPLOG_MEDIA_ROOT/games/my match.mp4' 'it'\\''s.mp4'",
    stderrTail: "line 1\nline 2",
  });
  const retrying = clipState(clip({ status: "retrying", next_retry_at: at(30), last_error: error }), T0, config);
  assert.equal(retrying.details.stderrTail, "line 1\nline 2");
  const plain = { code: "timed_out", message: "lost", retryable: true };
  assert.equal(clipState(clip({ status: "failed", last_error: plain }), T0, config).details, null);
  assert.equal(clipState(clip({ status: "completed" }), T0, config).details, null);
  assert.equal(commandLine(["a", "b c", ""]), "a 'b c' ''");
});

test("the timeline says when a person cancelled an attempt", () => {
  const events = [
    { type: "extraction.requested", recorded_at: at(0), data: { run: 1, attempt: 1, reason: "registered", not_before: at(0), max_attempts: 3 } },
    { type: "extraction.started", recorded_at: at(1), data: { run: 1, attempt: 1 } },
    { type: "extraction.cancelled", recorded_at: at(5), data: { run: 1, attempt: 1, by: "user", elapsed_seconds: 4 } },
    { type: "extraction.requested", recorded_at: at(9), data: { run: 2, attempt: 1, reason: "manual_retry", not_before: at(9), max_attempts: 3 } },
    { type: "extraction.cancelled", recorded_at: at(10), data: { run: 2, attempt: 1, by: "user", elapsed_seconds: 0 } },
  ];
  const [ran, waited] = attemptsFrom(events).map((a) => describeAttempt(a, T0 + 30_000));
  assert.equal(ran, "Run 1, attempt 1 of 3 (requested when the clip was added): cancelled by a person after 4.0 s");
  assert.equal(waited, "Run 2, attempt 1 of 3 (retried by a person): cancelled by a person before it started");
});
