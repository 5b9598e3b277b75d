/**
 * project-clips.js: a project's clips, kept current. `load()` pins the feed's cursor, then reads the clips, then
 * follows the feed (feed-client.js: the WebSocket, or polls when it is down or silent for CLIPLOG_POLL_AFTER) from
 * that cursor, so nothing in between is missed. On any event for a clip the clip is fetched again; a clip whose
 * fetch fails is fetched again until it works. The requests that act on clips (retry, cancel, retry all failed) are
 * here too. Draws nothing:
 * every clip it takes goes to `onClip`.
 *
 * For tests and the curious, `window.cliplogDebug` holds `applied` (how many times each event position was applied:
 * always 1), `modes` (the feed's modes in order) and `fetches` (clip refreshes).
 */

import { clipPath, projectPath } from "./api.js";
import { FeedClient } from "./feed-client.js";
import { session } from "./session.js";

const debug = { applied: {}, modes: [], fetches: 0 };
window.cliplogDebug = debug;

export class ProjectClips {
  /**
   * Callbacks:
   *   onClip(clip, {quiet})  a clip (ClipView, api/views.py) is new or newer; quiet: part of the first read
   *   onLoaded(clips)        the first read worked (clips: the project's clips)
   *   onMissing()            the project has no clips yet (or is someone else's): load() again after adding one
   *   onLoadFailed(error)    the read failed; load() is tried again in 5 s
   *   onMode(mode)           the feed's mode (feed-client.js MODES), for the connection indicator
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
      onError: (error) => console.warn("feed:", error),
    });
    this.callbacks.onMode(this.feed.mode);
    this.feed.start();
  }

  stop() {
    this.alive = false;
    clearTimeout(this.loadTimer);
    this.feed?.stop();
    this.feed = null;
  }

  onEvent(event) {
    debug.applied[event.position] = (debug.applied[event.position] ?? 0) + 1;
    if (event.project_id !== this.projectId) return;
    this.refresh(event.clip_id);
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

  /** Once a second: fetch the clips whose refresh failed again (at most every 3 s). */
  tick() {
    if (this.stale.size && Date.now() - this.lastStaleTry > 3000) this.refreshStale();
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
