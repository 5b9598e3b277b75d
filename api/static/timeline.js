/**
 * timeline.js: a clip's attempts in time, from its events (`GET .../clips/{id}/events`, oldest first). The picture
 * people read instead of logs when they ask "what happened to this clip?".
 *
 * `attemptsFrom(events)` is pure (one entry per run and attempt, in order). `renderTimeline(figure, attempts, now)`
 * fills a <figure>: a caption, then an ordered list with one item per attempt whose text says everything (outcome,
 * duration, error) and whose bar (aria-hidden, CSS positioned) shows when it waited and when it ran.
 */

import { errorSentence, formatCountdown, formatDuration, parseTime } from "./clip-state.js";

const REASONS = {
  registered: "requested when the clip was added",
  auto_retry: "automatic retry",
  manual_retry: "retried by a person",
  handed_back: "handed to another worker",
};

/** Why an attempt timed out, by the event's `reason` (API.md). */
export const TIMEOUT_REASONS = Object.freeze({
  deadline: "it ran past the time allowed for one attempt and was stopped",
  lease: "its worker stopped responding, so it was given up",
  stalled: "FFmpeg stopped making progress, so it was stopped",
  user: "it was taking longer than expected and a person retried it",
});

// Events recorded before timed_out carried a reason say only who noticed.
const TIMEOUT_CAUSES = {
  worker: TIMEOUT_REASONS.deadline,
  reaper: "it passed its deadline or its worker stopped responding, so it was given up",
  user: TIMEOUT_REASONS.user,
};

export function attemptsFrom(events) {
  const attempts = [];
  const byKey = new Map();
  for (const event of events) {
    const data = event.data ?? {};
    const key = `${data.run}.${data.attempt}`;
    let attempt = byKey.get(key);
    if (!attempt) {
      attempt = {
        run: data.run,
        attempt: data.attempt,
        maxAttempts: null,
        reason: null,
        requestedAt: null,
        notBefore: null,
        startedAt: null,
        endedAt: null,
        outcome: null, // "completed" | "failed" | "timed_out" | "cancelled" | null
        code: null,
        message: null,
        detectedBy: null,
        timeoutReason: null, // "deadline" | "lease" | "stalled" | "user" (null in events recorded before reasons)
        elapsed: null,
        duration: null,
        superseded: false,
      };
      byKey.set(key, attempt);
      attempts.push(attempt);
    }
    const at = parseTime(event.recorded_at);
    switch (event.type) {
      case "extraction.requested":
        attempt.requestedAt = at;
        attempt.reason = data.reason ?? null;
        attempt.notBefore = parseTime(data.not_before);
        attempt.maxAttempts = data.max_attempts ?? null;
        break;
      case "extraction.started":
        attempt.startedAt = at;
        break;
      case "extraction.completed":
        attempt.endedAt = at;
        attempt.outcome = "completed";
        attempt.elapsed = data.elapsed_seconds ?? null;
        attempt.duration = data.duration_seconds ?? null;
        break;
      case "extraction.failed":
        attempt.endedAt = at;
        attempt.outcome = "failed";
        attempt.code = data.code ?? null;
        attempt.message = data.message ?? null;
        attempt.elapsed = data.elapsed_seconds ?? null;
        break;
      case "extraction.timed_out":
        attempt.endedAt = at;
        attempt.outcome = "timed_out";
        attempt.detectedBy = data.detected_by ?? null;
        attempt.timeoutReason = data.reason ?? null;
        attempt.elapsed = data.elapsed_seconds ?? null;
        break;
      case "extraction.cancelled":
        attempt.endedAt = at;
        attempt.outcome = "cancelled";
        attempt.elapsed = data.elapsed_seconds ?? null;
        break;
      default:
        break;
    }
  }
  // An attempt without an outcome that is followed by another one never ran to the end: a retry replaced it.
  attempts.forEach((attempt, index) => {
    if (attempt.outcome === null && index < attempts.length - 1) {
      attempt.superseded = true;
      attempt.endedAt = attempts[index + 1].requestedAt;
    }
  });
  return attempts;
}

function seconds(value) {
  return typeof value === "number" ? `${value < 10 ? value.toFixed(1) : Math.round(value)} s` : null;
}

/** The sentence that describes one attempt (what a screen reader reads; also the visible label). */
export function describeAttempt(attempt, now) {
  const total = attempt.maxAttempts ? ` of ${attempt.maxAttempts}` : "";
  const head = `Run ${attempt.run}, attempt ${attempt.attempt}${total}`;
  const reason = REASONS[attempt.reason] ? ` (${REASONS[attempt.reason]})` : "";
  let what;
  if (attempt.outcome === "completed") {
    what = `extracted in ${seconds(attempt.elapsed) ?? "?"}`;
    if (typeof attempt.duration === "number") what += `, a ${attempt.duration.toFixed(1)} s clip`;
  } else if (attempt.outcome === "failed") {
    const after = seconds(attempt.elapsed);
    what = `failed${after ? ` after ${after}` : ""}: ${errorSentence({ code: attempt.code })}`;
    if (attempt.message) what += ` The service said: “${attempt.message}”`;
  } else if (attempt.outcome === "timed_out") {
    const after = seconds(attempt.elapsed);
    const cause = TIMEOUT_REASONS[attempt.timeoutReason] ?? TIMEOUT_CAUSES[attempt.detectedBy] ?? "it took too long";
    what = `timed out${after ? ` after ${after}` : ""}: ${cause}`;
  } else if (attempt.outcome === "cancelled") {
    const after = attempt.startedAt !== null ? seconds(attempt.elapsed) : null;
    what = `cancelled by a person ${after ? `after ${after}` : attempt.startedAt !== null ? "while it ran" : "before it started"}`;
  } else if (attempt.superseded) {
    what = attempt.startedAt ? "stopped: replaced by a retry" : "not started: replaced by a retry";
  } else if (attempt.startedAt !== null) {
    what = `running for ${formatDuration((now - attempt.startedAt) / 1000)}`;
  } else if (attempt.notBefore !== null && attempt.notBefore > now) {
    what = `scheduled to start in ${formatCountdown((attempt.notBefore - now) / 1000)}`;
  } else {
    what = "waiting for a worker";
  }
  return `${head}${reason}: ${what}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Fill `figure` (a <figure> element) with the timeline of `attempts` at `now` (ms). Returns true when some attempt
 * is still open (the caller re-renders it as time passes). */
export function renderTimeline(figure, attempts, now) {
  figure.replaceChildren();
  const captionId = `${figure.id || "timeline"}-caption`;
  figure.setAttribute("aria-labelledby", captionId);
  const caption = element("figcaption", "timeline-caption");
  caption.id = captionId;
  figure.append(caption);
  if (attempts.length === 0) {
    caption.textContent = "Timeline: no attempts yet";
    return false;
  }
  let start = Infinity;
  let end = -Infinity;
  let open = false;
  for (const a of attempts) {
    for (const t of [a.requestedAt, a.startedAt, a.endedAt]) {
      if (t !== null) {
        start = Math.min(start, t);
        end = Math.max(end, t);
      }
    }
    if (a.outcome === null && !a.superseded) {
      open = true;
      end = Math.max(end, now, a.notBefore ?? now);
    }
  }
  const span = Math.max(end - start, 1000);
  const count = attempts.length;
  caption.textContent = `Timeline: ${count} attempt${count === 1 ? "" : "s"} over ${formatDuration(span / 1000)}`;

  const list = element("ol", "attempts");
  for (const a of attempts) {
    const item = element("li", `attempt outcome-${a.outcome ?? (a.superseded ? "superseded" : a.startedAt ? "running" : "waiting")}`);
    item.append(element("span", "attempt-label", describeAttempt(a, now)));
    const track = element("span", "track");
    track.setAttribute("aria-hidden", "true");
    const place = (from, to, className) => {
      if (from === null) return;
      const bar = element("span", className);
      const left = ((from - start) / span) * 100;
      const width = (((to ?? from) - from) / span) * 100;
      bar.style.left = `${Math.max(0, Math.min(100, left))}%`;
      bar.style.width = `${Math.max(0, Math.min(100 - left, width))}%`;
      track.append(bar);
    };
    const ranUntil = a.endedAt ?? (a.outcome === null ? now : null);
    place(a.requestedAt, a.startedAt ?? ranUntil, "bar bar-wait");
    if (a.startedAt !== null) place(a.startedAt, ranUntil, "bar bar-run");
    item.append(track);
    list.append(item);
  }
  figure.append(list);
  const axis = element("p", "timeline-axis");
  axis.setAttribute("aria-hidden", "true");
  axis.append(element("span", null, clockTime(start)), element("span", null, clockTime(start + span)));
  figure.append(axis);
  return open;
}
