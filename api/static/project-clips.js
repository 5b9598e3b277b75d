/**
 * project-clips.js: a project's clips, kept current. `load()` pins the feed's cursor, then reads the clips, then
 * follows the feed (feed-client.js: the WebSocket, or polls when it is down or silent for CLIPLOG_POLL_AFTER) from
 * that cursor, so nothing in between is missed. On any event for a clip the clip is fetched again; a clip whose
 * fetch fails is fetched again until it works. The feed's progress messages update a running clip's `progress`
 * (when they are for its current run and attempt) without a fetch; pending clips are read again when another clip
 * of the project starts or ends, and every QUEUE_REFRESH seconds, so their place in the queue stays current. The
 * requests that act on clips (retry, cancel, retry all failed) are here too. Draws nothing: every clip it takes goes
 * to `onClip`.
 *
 * For tests and the curious, `window.cliplogDebug` holds `applied` (how many times each event position was applied:
 * always 1), `modes` (the feed's modes in order) and `fetches` (clip refreshes).
 */

import { clipPath, projectPath } from "./api.js";
import { FeedClient } from "./feed-client.js";
import { session } from "./session.js";

const debug = { applied: {}, modes: [], fetches: 0, progress: 0, caughtUp: 0 };
window.cliplogDebug = debug;

const QUEUE_REFRESH = 10; // seconds between two reads of a project that has pending clips
const MOVES_QUEUE = new Set(["extraction.started", "extraction.completed", "extraction.failed", "extraction.timed_out"]);

export class ProjectClips {
  /**
   * Callbacks:
   *   onClip(clip, {quiet})  a clip (ClipView, api/views.py) is new or newer; quiet: part of the first read
   *   onLoaded(clips)        the first read worked (clips: the project's clips)
   *   onMissing()            the project has no clips yet (or is someone else's): load() again after adding one
   *   onLoadFailed(error)    the read failed; load() is tried again in 5 s
   *   onMode(mode)           the feed's mode (feed-client.js MODES), for the connection indicator
   *   onCaughtUp()           the feed's socket has sent everything up to now (again after each reconnection)
   */
  constructor(projectId, callbacks) {
    this.projectId = projectId;
    this.callbacks = callbacks;
    this.clips = new Map(); // clip_id -> ClipView
    this.feed = null;
    this.inflight = new Map(); // clip_id -> {again: bool}: one refresh per clip at a time
    this.stale = new Set(); // clips whose refresh failed: fetched again until it works
    this.lastStaleTry = 0;
    this.loadTimer = null;
    this.queueTimer = null;
    this.lastQueueRead = Date.now();
    this.alive = true;
  }

  get(clipId) {
    return this.clips.get(clipId);
  }

  get size() {
    return this.clips.size;
  }

  /** Whether the feed is followed (after a load that found the project). */
  get following() {
    return this.feed !== null;
  }

  /** Pin the feed's cursor, then read the clips, then follow from the cursor: nothing between is missed. */
  async load() {
    const api = session.api;
    let cursor;
    try {
      const page = await api.get(`/api/events?after=latest&limit=1&project_id=${encodeURIComponent(this.projectId)}`);
      cursor = page.next_cursor;
      const clips = await api.get(projectPath(this.projectId));
      if (!this.alive) return;
      for (const clip of clips) this.upsert(clip, { quiet: true });
      this.callbacks.onLoaded(clips);
    } catch (error) {
      if (!this.alive) return;
      if (error.status === 404) {
        this.callbacks.onMissing();
        return; // the project does not exist yet (or is not yours): it is followed once a clip is added
      }
      this.callbacks.onLoadFailed(error);
      clearTimeout(this.loadTimer);
      this.loadTimer = setTimeout(() => this.alive && !this.feed && this.load(), 5000);
      return;
    }
    this.follow(cursor);
  }

  follow(cursor) {
    if (this.feed) return;
    this.feed = new FeedClient({
      token: session.token,
      after: cursor,
      projectId: this.projectId,
      pollAfter: session.config.poll_after,
      // Try the socket again at least every POLL_AFTER seconds (30 s at most): back to live soon after it returns.
      backoffMax: Math.max(1, Math.min(30, session.config.poll_after)),
      onEvent: (event) => this.onEvent(event),
      onMode: (mode) => {
        debug.modes.push(mode);
        this.callbacks.onMode(mode);
        if (mode === "live" || mode === "polling") this.refreshStale();
      },
      onReset: () => this.reloadAll(),
      onProgress: (message) => this.onProgress(message),
      onCaughtUp: () => {
        debug.caughtUp += 1;
        this.callbacks.onCaughtUp?.();
      },
      onError: (error) => console.warn("feed:", error),
    });
    this.callbacks.onMode(this.feed.mode);
    this.feed.start();
  }

  stop() {
    this.alive = false;
    clearTimeout(this.loadTimer);
    clearTimeout(this.queueTimer);
    this.feed?.stop();
    this.feed = null;
  }

  onEvent(event) {
    debug.applied[event.position] = (debug.applied[event.position] ?? 0) + 1;
    if (event.project_id !== this.projectId) return;
    this.refresh(event.clip_id);
    if (MOVES_QUEUE.has(event.type)) this.refreshQueueSoon();
  }

  /** A running clip's live progress (a feed message, not an event): kept in the clip as its `progress`. */
  onProgress(message) {
    const clip = this.clips.get(message.clip_id);
    if (message.project_id !== this.projectId || !clip || clip.status !== "running") return;
    if (clip.run !== message.run || clip.attempt !== message.attempt) return; // another attempt's
    if (clip.progress && clip.progress.percent > message.percent) return; // never backwards
    debug.progress += 1;
    const progress = { speed: null, ...clip.progress, percent: message.percent, eta_seconds: message.eta_seconds };
    this.clips.set(clip.clip_id, { ...clip, progress });
    this.callbacks.onClip(this.clips.get(clip.clip_id), { quiet: true });
  }

  hasPending() {
    for (const clip of this.clips.values()) if (clip.status === "pending") return true;
    return false;
  }

  /** Read the project's clips again shortly (one read for a burst of starts and ends) if some are pending. */
  refreshQueueSoon() {
    if (this.queueTimer !== null || !this.hasPending()) return;
    this.queueTimer = setTimeout(() => {
      this.queueTimer = null;
      this.refreshQueue();
    }, 300);
  }

  async refreshQueue() {
    this.lastQueueRead = Date.now();
    try {
      const clips = await session.api.get(projectPath(this.projectId));
      // Only clips the page has: a new one comes in with its own events and read (retried until it works).
      if (this.alive) for (const clip of clips) if (this.clips.has(clip.clip_id)) this.upsert(clip);
    } catch (error) {
      console.warn("queue", error);
    }
  }

  /** Take a ClipView unless a newer version of the clip is already known. `force`: take it regardless. */
  upsert(clip, { quiet = false, force = false } = {}) {
    const known = this.clips.get(clip.clip_id);
    if (known && !force && clip.version < known.version) return;
    this.clips.set(clip.clip_id, clip);
    this.callbacks.onClip(clip, { quiet });
  }

  /** GET the clip again; a burst of events for one clip costs at most two requests. */
  async refresh(clipId) {
    const pending = this.inflight.get(clipId);
    if (pending) {
      pending.again = true;
      return;
    }
    const marker = { again: false };
    this.inflight.set(clipId, marker);
    try {
      do {
        marker.again = false;
        debug.fetches += 1;
        try {
          const clip = await session.api.get(clipPath(this.projectId, clipId));
          this.stale.delete(clipId);
          if (this.alive) this.upsert(clip);
        } catch (error) {
          // The event is applied; its clip is not. Fetched again by tick() (and when the feed is back).
          this.stale.add(clipId);
          console.warn("refresh", clipId, error);
        }
      } while (marker.again && this.alive);
    } finally {
      this.inflight.delete(clipId);
    }
  }

  refreshStale() {
    this.lastStaleTry = Date.now();
    for (const clipId of this.stale) this.refresh(clipId);
  }

  /** Once a second: fetch the clips whose refresh failed again (at most every 3 s); pending clips' places in the
   * queue move with other projects' clips too, which send this page no event: read them every QUEUE_REFRESH s. */
  tick() {
    if (this.stale.size && Date.now() - this.lastStaleTry > 3000) this.refreshStale();
    if (this.feed && this.hasPending() && Date.now() - this.lastQueueRead > QUEUE_REFRESH * 1000) this.refreshQueue();
  }

  async reloadAll() {
    try {
      const clips = await session.api.get(projectPath(this.projectId));
      for (const clip of clips) this.upsert(clip, { force: true });
    } catch (error) {
      console.warn("reload", error);
    }
  }

  /** POST retry-extraction; a refusal is rethrown (ApiError) after the clip is fetched again. */
  retry(clipId) {
    return this.act(clipId, "retry-extraction");
  }

  /** POST cancel; a refusal is rethrown (ApiError) after the clip is fetched again. */
  cancel(clipId) {
    return this.act(clipId, "cancel");
  }

  async act(clipId, action) {
    try {
      const { data } = await session.api.post(`${clipPath(this.projectId, clipId)}/${action}`);
      this.upsert(data);
    } catch (error) {
      this.refresh(clipId);
      throw error;
    }
  }

  /** POST the project's retry-failed; resolves to {changed, skipped}. The clips are read again either way (the feed
   * brings the changes too; this shows them at once). */
  async retryFailed() {
    try {
      const { data } = await session.api.post(`/api/clips/projects/${encodeURIComponent(this.projectId)}/retry-failed`);
      return data;
    } finally {
      this.reloadAll();
    }
  }
}
