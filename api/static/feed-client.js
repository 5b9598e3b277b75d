/**
 * feed-client.js: follow cliplog's event feed from a browser. An ES module with no dependencies and no build step.
 *
 *   import { FeedClient } from "/feed-client.js";
 *
 *   const feed = new FeedClient({
 *     token,                 // API token: `?token=` on the WebSocket, `Authorization: Bearer` on polls
 *     after: "latest",       // where to start: a cursor, "latest" (from now on) or null (the whole log)
 *     projectId: null,       // only this project (default: all of the token's projects)
 *     pollAfter: 30,         // seconds of WebSocket silence before polling: pass CLIPLOG_POLL_AFTER
 *     onEvent(event) {},     // every event once, in position order (the API.md event object)
 *     onMode(mode, previous) {}, // "live" | "polling" | "reconnecting" | "offline" (see below)
 *     onReset(detail) {},    // the cursor belongs to another log (database reset or restored): reload your
 *                            // state; the client then follows from "latest" with a fresh position
 *     onError(error) {},     // refusals (bad token 4401/401, origin not allowed 4403, project not visible 4404/404, bad input 4400/400)
 *                            // and exceptions thrown by onEvent; the client keeps retrying regardless
 *     onProgress(message) {}, // {"type": "progress", project_id, clip_id, run, attempt, percent, eta_seconds}:
 *                            // a running clip's progress (socket only; no cursor, nothing lost by missing one)
 *     onCaughtUp(cursor) {}, // the socket has sent its backlog: everything up to now is applied (once per socket)
 *   });
 *   feed.start();            // connect (idempotent)
 *   feed.stop();             // close everything; start() again resumes from feed.cursor
 *   feed.cursor              // the cursor of the last event applied (persist it to resume later)
 *   feed.position            // the position of the last event applied (0: none yet)
 *   feed.mode                // the current mode
 *
 * Behaviour
 * - Connects to `GET /api/events/ws?after=<cursor>`; the server sends the backlog after the cursor, then live events.
 * - Modes: "live" while the socket is open and not silent; "polling" while the socket is down or silent and
 *   `GET /api/events` (long poll) answers; "reconnecting" while neither works yet or the server answers with an
 *   error; "offline" when the last poll could not reach the server at all (network error).
 * - The socket is reconnected for ever (it never gives up) with exponential backoff and jitter: the n-th
 *   consecutive failure waits a random time in [d/2, d], d = min(backoffMax, backoffBase * 2^n). A socket that
 *   delivered a message resets the count; "too slow" (4408) and "restarting" (1012) reconnect at once.
 * - While the socket is down, or when it has been silent for `pollAfter` seconds (the server pings every 15 s, so
 *   silence means a dead connection: it is closed and reconnected), the client long-polls `GET /api/events`
 *   from its cursor (the first request, and the first after a failure, with `wait=0`, so the mode says "polling"
 *   as soon as polling works). When a socket opens again, polling stops.
 * - Messages of other types (`caught_up`, `progress`, any this client does not know) never move the cursor or the
 *   position; `caught_up` and `progress` go to their callbacks, unknown ones are ignored.
 * - Each event is applied once: anything at or below the last applied position is dropped, so the socket's
 *   backlog and a concurrent poll never apply an event twice, and, since both read in order from a cursor the
 *   client had, never skip one.
 * - `after: "latest"` is pinned to a concrete cursor (one poll) before the socket connects, so a reconnection
 *   before the first event loses nothing.
 *
 * Dependencies can be injected (for tests, or for a non-browser host): `baseUrl` (default: the page's origin),
 * `WebSocket`, `fetch`, `setTimeout`, `clearTimeout`, `random`, `AbortController`, and the tunables `backoffBase`
 * (0.5 s), `backoffMax` (30 s), `pollWait` (25 s, the long-poll hold), `pageLimit` (1000).
 */

export const MODES = Object.freeze(["live", "polling", "reconnecting", "offline"]);

const REFUSALS = new Map([
  [4400, 400],
  [4401, 401],
  [4403, 403],
  [4404, 404],
]);
const PROMPT_RECONNECT = new Set([1000, 1001, 1012, 4408]);

export class FeedError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.name = "FeedError";
    this.status = status;
    this.detail = detail;
  }
}

export class FeedClient {
  constructor(options = {}) {
    const g = globalThis;
    this.token = options.token ?? null;
    this.projectId = options.projectId ?? null;
    this.cursor = options.after ?? null;
    this.position = 0;
    this.pollAfter = options.pollAfter ?? 30;
    this.pollWait = options.pollWait ?? 25;
    this.pageLimit = options.pageLimit ?? 1000;
    this.backoffBase = options.backoffBase ?? 0.5;
    this.backoffMax = options.backoffMax ?? 30;
    this.onEvent = options.onEvent ?? (() => {});
    this.onMode = options.onMode ?? (() => {});
    this.onReset = options.onReset ?? (() => {});
    this.onError = options.onError ?? (() => {});
    this.onProgress = options.onProgress ?? (() => {});
    this.onCaughtUp = options.onCaughtUp ?? (() => {});
    this.baseUrl = (options.baseUrl ?? (g.location ? g.location.origin : "")).replace(/\/$/, "");
    this._WebSocket = options.WebSocket ?? g.WebSocket;
    this._fetch = options.fetch ?? ((...args) => g.fetch(...args));
    this._setTimeout = options.setTimeout ?? ((fn, ms) => g.setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? ((id) => g.clearTimeout(id));
    this._random = options.random ?? Math.random;
    this._AbortController = options.AbortController ?? g.AbortController;

    this.mode = "offline";
    this._running = false;
    this._socket = null;
    this._socketOpen = false;
    this._failures = 0; // consecutive socket failures
    this._reconnectTimer = null;
    this._silenceTimer = null;
    this._polling = false;
    this._pollGeneration = 0; // bumped by _stopPolling: an older loop still awaiting its request then quits
    this._pollFailures = 0;
    this._pollAbort = null;
    this._pollSleep = null; // {id, resolve} while the poll loop sleeps
  }

  // Public ---------------------------------------------------------------------------------------------------------

  start() {
    if (this._running) return;
    this._running = true;
    this._failures = 0;
    this._setMode("reconnecting");
    if (this.cursor === "latest") this._pinLatest();
    else this._connect();
  }

  stop() {
    this._running = false;
    this._stopPolling();
    this._clearTimer("_reconnectTimer");
    this._clearTimer("_silenceTimer");
    this._dropSocket();
  }

  /** The delay (ms) before the n-th consecutive reconnection attempt: a random value in [d/2, d]. */
  backoff(failures) {
    const ceiling = Math.min(this.backoffMax, this.backoffBase * 2 ** Math.min(failures, 30));
    return 1000 * (ceiling / 2 + (this._random() * ceiling) / 2);
  }

  // Events ---------------------------------------------------------------------------------------------------------

  _apply(event) {
    if (!event || typeof event.position !== "number" || event.position <= this.position) return false;
    this.position = event.position;
    this.cursor = event.cursor;
    try {
      this.onEvent(event);
    } catch (error) {
      this._report(error);
    }
    return true;
  }

  _reset(detail) {
    this.position = 0;
    this.cursor = "latest";
    try {
      this.onReset(detail);
    } catch (error) {
      this._report(error);
    }
    if (!this._running) return;
    this._dropSocket();
    this._stopPolling();
    this._clearTimer("_reconnectTimer");
    this._failures = 0;
    this._setMode("reconnecting");
    this._pinLatest();
  }

  _call(callback, argument) {
    try {
      callback(argument);
    } catch (error) {
      this._report(error);
    }
  }

  _report(error) {
    try {
      this.onError(error);
    } catch {
      /* a broken error callback must not stop the feed */
    }
  }

  _setMode(mode) {
    if (mode === this.mode) return;
    const previous = this.mode;
    this.mode = mode;
    try {
      this.onMode(mode, previous);
    } catch (error) {
      this._report(error);
    }
  }

  // URLs -----------------------------------------------------------------------------------------------------------

  _query(extra) {
    const params = new URLSearchParams();
    if (this.cursor) params.set("after", this.cursor);
    if (this.projectId) params.set("project_id", this.projectId);
    for (const [key, value] of Object.entries(extra)) params.set(key, String(value));
    return params.toString();
  }

  _socketUrl() {
    const base = this.baseUrl.replace(/^http(s?):/, "ws$1:");
    return `${base}/api/events/ws?${this._query(this.token ? { token: this.token } : {})}`;
  }

  _pollUrl(wait) {
    return `${this.baseUrl}/api/events?${this._query({ limit: this.pageLimit, wait })}`;
  }

  // The socket -----------------------------------------------------------------------------------------------------

  _connect() {
    this._reconnectTimer = null;
    if (!this._running) return;
    let socket;
    try {
      socket = new this._WebSocket(this._socketUrl());
    } catch (error) {
      this._report(error);
      this._socketFailed(false);
      return;
    }
    this._socket = socket;
    this._socketOpen = false;
    this._armSilence(); // a socket that neither opens nor fails within pollAfter counts as silent
    socket.onopen = () => {
      if (socket !== this._socket) return;
      this._socketOpen = true;
      this._stopPolling();
      this._setMode("live");
      this._armSilence();
    };
    socket.onmessage = (message) => {
      if (socket !== this._socket) return;
      this._failures = 0;
      this._armSilence();
      let data;
      try {
        data = JSON.parse(message.data);
      } catch (error) {
        this._report(error);
        return;
      }
      if (data.type === "event") this._apply(data.event);
      else if (data.type === "reset") this._reset(data.detail);
      else if (data.type === "progress") this._call(this.onProgress, data);
      else if (data.type === "caught_up") this._call(this.onCaughtUp, data.cursor);
    };
    socket.onerror = () => {}; // a close event follows
    socket.onclose = (event) => {
      if (socket !== this._socket) return;
      const code = event?.code ?? 1006;
      if (code === 4410) {
        this._reset(event?.reason || "cursor from another log");
        return;
      }
      if (REFUSALS.has(code)) {
        this._report(new FeedError(REFUSALS.get(code), event?.reason || "refused"));
        this._failures = Math.max(this._failures, 30); // keep trying, at the slowest pace
      }
      this._socketFailed(PROMPT_RECONNECT.has(code));
    };
  }

  _socketFailed(prompt) {
    this._dropSocket();
    this._failures = prompt ? 0 : this._failures + 1;
    if (!this._running) return;
    if (this.mode === "live") this._setMode("reconnecting");
    this._clearTimer("_reconnectTimer");
    this._reconnectTimer = this._setTimeout(() => this._connect(), this.backoff(this._failures));
    this._startPolling();
  }

  _armSilence() {
    this._clearTimer("_silenceTimer");
    this._silenceTimer = this._setTimeout(() => {
      this._silenceTimer = null;
      if (this._socket) this._socketFailed(false); // silent: poll, close it, reconnect with backoff
    }, this.pollAfter * 1000);
  }

  _dropSocket() {
    const socket = this._socket;
    this._socket = null;
    this._socketOpen = false;
    this._clearTimer("_silenceTimer");
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close();
      } catch {
        /* already closed */
      }
    }
  }

  _clearTimer(name) {
    if (this[name] !== null) {
      this._clearTimeout(this[name]);
      this[name] = null;
    }
  }

  // Polling --------------------------------------------------------------------------------------------------------

  _startPolling() {
    if (this._polling || !this._running) return;
    this._polling = true;
    this._pollLoop();
  }

  _stopPolling() {
    this._polling = false;
    this._pollGeneration += 1;
    if (this._pollAbort) this._pollAbort.abort();
    this._pollAbort = null;
    if (this._pollSleep) {
      this._clearTimeout(this._pollSleep.id);
      this._pollSleep.resolve();
      this._pollSleep = null;
    }
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const id = this._setTimeout(() => {
        this._pollSleep = null;
        resolve();
      }, ms);
      this._pollSleep = { id, resolve };
    });
  }

  /** One request; true when it answered 200 (events applied). Refusals and resets are handled here. */
  async _pollOnce(wait) {
    const controller = this._AbortController ? new this._AbortController() : null;
    this._pollAbort = controller;
    let response;
    try {
      response = await this._fetch(this._pollUrl(wait), {
        headers: this.token ? { Authorization: `Bearer ${this.token}` } : {},
        signal: controller ? controller.signal : undefined,
      });
    } catch (error) {
      if (controller?.signal.aborted) return null;
      this._pollFailures += 1;
      if (!this._socketOpen) this._setMode("offline");
      return false;
    }
    if (controller?.signal.aborted) return null;
    if (response.status === 200) {
      let page;
      try {
        page = await response.json();
      } catch (error) {
        this._pollFailures += 1;
        return false;
      }
      this._pollFailures = 0;
      if (!this._socketOpen) this._setMode("polling");
      for (const event of page.events) this._apply(event);
      if (page.events.length === 0 && (this.cursor === null || this.cursor === "latest")) {
        this.cursor = page.next_cursor;
      }
      return page.events.length < this.pageLimit ? "done" : "more";
    }
    let detail = `HTTP ${response.status}`;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {
      /* not JSON */
    }
    if (response.status === 410) {
      this._reset(detail);
      return null;
    }
    if ([400, 401, 404].includes(response.status)) {
      this._report(new FeedError(response.status, detail));
      this._pollFailures = Math.max(this._pollFailures, 30);
    } else {
      this._pollFailures += 1;
    }
    if (!this._socketOpen) this._setMode("reconnecting");
    return false;
  }

  async _pollLoop() {
    const generation = this._pollGeneration;
    const current = () => this._polling && this._running && generation === this._pollGeneration;
    // The first request (and the first after a failure) answers at once: a long poll's answer can take pollWait
    // seconds, and until it comes the mode would still say "reconnecting" (or "offline") although polling works.
    let wait = 0;
    while (current()) {
      const result = await this._pollOnce(wait);
      if (!current() || result === null) break;
      wait = result === false ? 0 : this.pollWait;
      if (result === false) await this._sleep(this.backoff(this._pollFailures));
    }
  }

  /** Turn "latest" into a concrete cursor with one poll (retried with backoff), then connect the socket. */
  async _pinLatest() {
    while (this._running && this.cursor === "latest") {
      const result = await this._pollOnce(0);
      if (!this._running || result === null) return;
      if (result === false) await this._sleep(this.backoff(this._pollFailures));
    }
    if (this._running && !this._socket && this._reconnectTimer === null) this._connect();
  }
}
