/**
 * clip-state.js: what a clip shows, decided from the API's ClipView (api/views.py) and the page's clock. Pure: no
 * DOM, no fetch, so the rules are testable on their own (tests/js/clip-state.test.mjs).
 *
 * Exactly one of seven kinds:
 *   waiting     "Waiting for extraction"              pending, for less than slow_after
 *   extracting  "Extracting…" + elapsed               running, for less than slow_after since it started
 *   retrying    "Retrying: attempt n of m in Xs"      retrying: counts down to next_retry_at
 *   slow        "Taking longer than expected"         pending/running for slow_after or more (the server's `slow`
 *                                                     flag, or the page's clock), or an automatic retry overdue by
 *                                                     slow_after; offers "Retry extraction"
 *   failed      "Extraction failed" + error in words  failed; offers "Retry extraction"
 *   extracted   "Extracted"                           completed; the page shows a player for file_url
 *   cancelled   "Cancelled"                           a person cancelled it; offers "Retry extraction"
 * Only waiting, extracting and retrying show a spinner, and each of them turns into `slow` after a bounded time.
 * An extracting clip also shows its live progress (percent and ETA, from ClipView.progress or the feed's progress
 * messages); a waiting one says where it is in the queue (ClipView.queue_position, queue_eta_seconds).
 * Waiting, extracting, retrying and slow offer "Cancel extraction" (`canCancel`).
 */

export const KINDS = Object.freeze(["waiting", "extracting", "retrying", "slow", "failed", "extracted", "cancelled"]);

/** The statuses of ClipView.status (api/views.py ClipStatus; tests/ui/test_js.py checks that they are the same). */
export const STATUSES = Object.freeze(["pending", "running", "retrying", "completed", "failed", "cancelled"]);

export const LABELS = Object.freeze({
  waiting: "Waiting for extraction",
  extracting: "Extracting…",
  retrying: "Retrying",
  slow: "Taking longer than expected",
  failed: "Extraction failed",
  extracted: "Extracted",
  cancelled: "Cancelled",
});

/** Error codes (domain/policy.py RETRYABLE, and the worker's hand-back) in words a person understands. */
export const ERROR_SENTENCES = Object.freeze({
  source_missing: "The source video is no longer in the media folder.",
  source_unreadable: "The source video could not be read from the media folder.",
  not_a_video: "The source file is not a video that can be cut: it may be damaged or still uploading.",
  range_past_end: "The clip's start or end lies past the end of the source video.",
  ffmpeg_exit: "The video cutter (FFmpeg) stopped with an error while cutting the clip.",
  ffmpeg_killed: "The video cutter (FFmpeg) was stopped before it finished.",
  output_invalid: "The cut came out damaged (wrong length or no picture), so it was thrown away.",
  timed_out: "Cutting the clip took too long and was stopped.",
  worker_lost: "The machine cutting the clip stopped responding.",
  worker_shutdown: "The machine cutting the clip was shut down before it finished.",
  internal: "Something went wrong inside cliplog while cutting the clip.",
});

/** What a person can do about it, when there is more to say than "Retry extraction". */
export const ERROR_ADVICE = Object.freeze({
  source_missing: "Put the video back in the media folder, then retry.",
  source_unreadable: "Check the file's permissions, then retry.",
  not_a_video: "Replace the file with a complete video, then retry.",
  range_past_end: "This clip cannot be cut from this video; add a clip with a range inside the video.",
});

export function errorSentence(error) {
  if (!error) return "The extraction did not succeed.";
  return ERROR_SENTENCES[error.code] ?? "The extraction did not succeed.";
}

export function errorAdvice(error) {
  return (error && ERROR_ADVICE[error.code]) || null;
}

export function parseTime(value) {
  if (!value) return null;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

/** 0:07, 4:59, 1:02:03 (whole seconds, rounded down; negative values count as 0). */
export function formatDuration(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** "7s", "4m 59s", "1h 2m": a countdown's remaining time (rounded up, so it never says 0s before it is due). */
export function formatCountdown(seconds) {
  const total = Math.max(0, Math.ceil(seconds));
  if (total < 60) return `${total}s`;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  return h > 0 ? `${h}h ${m}m` : `${m}m ${s}s`;
}

/** 12 -> "0:12", 31.5 -> "0:31.5" (a position in the source video). */
export function position(seconds) {
  const whole = Math.floor(seconds);
  const fraction = Math.round((seconds - whole) * 1000) / 1000;
  const text = formatDuration(whole);
  return fraction ? `${text}${String(fraction).slice(1)}` : text;
}

/** What a clip is called on the page: its name, or its id when it has none. */
export function clipName(clip) {
  return clip.name || clip.clip_id;
}

/** A command as one line a person can paste into a shell: each argument quoted when it needs to be. */
export function commandLine(args) {
  return args.map((arg) => (/^[\w@%+=:,./$-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`)).join(" ");
}

/** What FFmpeg was run with and its last lines (the error's `command` and `stderr_tail`), or null without them. */
export function errorDetails(error) {
  if (!error || (!error.command && !error.stderr_tail)) return null;
  return { command: error.command ? commandLine(error.command) : null, stderrTail: error.stderr_tail ?? null };
}

/**
 * The state to show for `clip` at `now` (milliseconds, the page's clock) with `config` ({slow_after} in seconds).
 * Returns {kind, label, time, detail, error, advice, canRetry, canRetryNow, busy, nextChangeAt}:
 *   label        the words of the state ("Retrying: attempt 2 of 3 in 7s" for retrying)
 *   time         elapsed time shown beside "Extracting…" / "Waiting…" (m:ss) or null
 *   detail       a sentence under the label (the error in words, or why it is slow) or null
 *   error        the service's own message (failed, or the last error of a retrying clip) or null
 *   canRetry     offers "Retry extraction" (failed, slow)
 *   canRetryNow  offers "Retry now" (retrying: run at once instead of waiting)
 *   canCancel    offers "Cancel extraction" (waiting, extracting, retrying, slow)
 *   details      {command, stderrTail} of the error shown (errorDetails), behind a "Details" toggle, or null
 *   busy         shows a spinner (bounded: waiting, extracting, retrying only)
 *   progress     extracting: progressOf(clip) ({percent, text}) or null
 */
export function clipState(clip, now, config) {
  const slowAfter = Number(config?.slow_after ?? 300);
  const result = {
    kind: "waiting",
    label: LABELS.waiting,
    time: null,
    detail: null,
    error: null,
    advice: null,
    canRetry: false,
    canRetryNow: false,
    canCancel: ["pending", "running", "retrying"].includes(clip.status),
    details: null,
    busy: false,
    progress: null,
  };
  const state = decide(result, clip, now, slowAfter);
  if (state.error) state.details = errorDetails(clip.last_error);
  return state;
}

function decide(result, clip, now, slowAfter) {
  switch (clip.status) {
    case "completed": {
      result.kind = "extracted";
      result.label = LABELS.extracted;
      if (typeof clip.duration_seconds === "number") result.detail = `${clip.duration_seconds.toFixed(1)} s clip`;
      return result;
    }
    case "cancelled": {
      result.kind = "cancelled";
      result.label = LABELS.cancelled;
      result.detail = "The extraction was cancelled. Retry it to extract the clip.";
      result.canRetry = true;
      return result;
    }
    case "failed": {
      result.kind = "failed";
      result.label = LABELS.failed;
      result.detail = errorSentence(clip.last_error);
      result.error = clip.last_error?.message ?? null;
      result.advice = errorAdvice(clip.last_error);
      result.canRetry = true;
      if (clip.last_error?.retryable && clip.attempt >= clip.max_attempts && clip.max_attempts > 1) {
        result.advice = `All ${clip.max_attempts} attempts failed. ${result.advice ?? ""}`.trim();
      }
      return result;
    }
    case "retrying": {
      const due = parseTime(clip.next_retry_at);
      const remaining = due === null ? 0 : (due - now) / 1000;
      const overdue = -remaining;
      if (due !== null && overdue > slowAfter) {
        return slow(result, clip, `The automatic retry was due ${formatDuration(overdue)} ago and has not started.`);
      }
      result.kind = "retrying";
      const what = `Retrying: attempt ${clip.attempt} of ${clip.max_attempts}`;
      result.label = remaining > 0 ? `${what} in ${formatCountdown(remaining)}` : `${what} now`;
      if (clip.last_error) {
        result.detail = `The last attempt did not succeed. ${errorSentence(clip.last_error)}`;
        result.error = clip.last_error.message;
      }
      result.canRetryNow = true;
      result.busy = true;
      return result;
    }
    case "running": {
      const since = parseTime(clip.started_at) ?? parseTime(clip.status_since);
      const elapsed = since === null ? 0 : Math.max(0, (now - since) / 1000);
      if (clip.slow || elapsed > slowAfter) {
        return slow(result, clip, `Extracting for ${formatDuration(elapsed)} so far.`);
      }
      result.kind = "extracting";
      result.label = LABELS.extracting;
      result.time = formatDuration(elapsed);
      result.busy = true;
      result.progress = progressOf(clip);
      if (clip.attempt > 1) result.detail = `Attempt ${clip.attempt} of ${clip.max_attempts}.`;
      return result;
    }
    case "pending": {
      const since = parseTime(clip.status_since) ?? parseTime(clip.created_at);
      const elapsed = since === null ? 0 : Math.max(0, (now - since) / 1000);
      if (clip.slow || elapsed > slowAfter) {
        return slow(result, clip, `Waiting for a worker for ${formatDuration(elapsed)} so far.`);
      }
      result.kind = "waiting";
      result.label = LABELS.waiting;
      result.detail = queueSentence(clip);
      result.busy = true;
      return result;
    }
    default: {
      // A status this page does not know (a newer server?): say so rather than guess "waiting".
      result.kind = "failed";
      result.label = `Unknown state: ${clip.status}`;
      result.detail = "This page does not know this state; reload it to get the latest version.";
      return result;
    }
  }
}

function slow(result, clip, detail) {
  result.kind = "slow";
  result.label = LABELS.slow;
  result.detail = detail;
  result.canRetry = true;
  if (clip.last_error) result.error = clip.last_error.message;
  return result;
}

/** A running clip's progress: {percent (0..100), text ("42% · about 3s left")}, or null when none is known. */
export function progressOf(clip) {
  const progress = clip.status === "running" ? clip.progress : null;
  if (!progress || typeof progress.percent !== "number") return null;
  const percent = Math.max(0, Math.min(100, progress.percent));
  const eta = typeof progress.eta_seconds === "number" ? ` · about ${formatCountdown(progress.eta_seconds)} left` : "";
  return { percent, text: `${Math.floor(percent)}%${eta}` };
}

/** Where a pending clip is in the queue, in words ("2 clips ahead of it · ready in about 12s"), or null. */
export function queueSentence(clip) {
  if (clip.status !== "pending" || typeof clip.queue_position !== "number") return null;
  const n = clip.queue_position;
  const place = n === 0 ? "Next in the queue" : `${n} clip${n === 1 ? "" : "s"} ahead of it in the queue`;
  const eta = typeof clip.queue_eta_seconds === "number" ? ` · ready in about ${formatCountdown(clip.queue_eta_seconds)}` : "";
  return place + eta;
}

/** The summary a screen reader hears when a clip changes state: "Goal: Extraction failed". */
export function announcement(name, state) {
  return `${name}: ${state.kind === "retrying" ? state.label.replace(/ in .*$/, "") : state.label}`;
}
