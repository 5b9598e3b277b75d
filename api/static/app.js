/**
 * app.js: cliplog's web UI. Plain ES modules, no build step, no dependencies.
 *
 *   #/                                 the caller's projects (GET /api/clips/projects)
 *   #/projects/{project}               a project: the clip sidebar, the add-clip form
 *   #/projects/{project}/clips/{clip}  the same with one clip open: its state, its player, its timeline
 *
 * The token comes from `?token=` (what `cliplog dev` prints); it is kept in sessionStorage and removed from the
 * address bar. Clip states are decided by clip-state.js with the page's clock, so a spinner never turns for longer
 * than CLIPLOG_SLOW_AFTER without saying so. Updates come from FeedClient (feed-client.js): the WebSocket, or polls
 * when it is down or silent for CLIPLOG_POLL_AFTER. On any event for a clip the page fetches that clip again.
 *
 * For tests and the curious, `window.cliplogDebug` holds `applied` (how many times each event position was applied:
 * always 1), `modes` (the feed's modes in order) and `fetches` (clip refreshes).
 */

import { Api, ApiError, clipPath, projectPath } from "./api.js";
import { announcement, clipState, formatDuration } from "./clip-state.js";
import { FeedClient } from "./feed-client.js";
import { attemptsFrom, renderTimeline } from "./timeline.js";

const TOKEN_KEY = "cliplog.token";
const ID = /^[A-Za-z0-9_-]{1,64}$/;

const debug = { applied: {}, modes: [], fetches: 0 };
window.cliplogDebug = debug;

// DOM helpers -------------------------------------------------------------------------------------------------------

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function setText(node, text) {
  const value = text ?? "";
  if (node.textContent !== value) node.textContent = value;
  node.hidden = value === "";
}

let lastId = 0;
const newId = (prefix) => `${prefix}-${++lastId}`;

/** 12 -> "0:12", 31.5 -> "0:31.5" (a position in the source video). */
function position(seconds) {
  const whole = Math.floor(seconds);
  const fraction = Math.round((seconds - whole) * 1000) / 1000;
  const text = formatDuration(whole);
  return fraction ? `${text}${String(fraction).slice(1)}` : text;
}

function clipName(clip) {
  return clip.name || clip.clip_id;
}

// The shell ---------------------------------------------------------------------------------------------------------

const shell = {
  main: document.getElementById("main"),
  crumbs: document.getElementById("crumbs"),
  connection: document.getElementById("connection"),
  connectionText: document.getElementById("connection-text"),
  user: document.getElementById("user"),
  signOut: document.getElementById("sign-out"),
  announcer: document.getElementById("announcer"),
};

const CONNECTION = {
  live: ["Live", "Updates arrive as they happen."],
  polling: ["Polling", "The live connection is unavailable; the page asks the server for updates."],
  reconnecting: ["Reconnecting…", "The page is trying to reach the server again."],
  offline: ["Offline", "The server cannot be reached; the page keeps trying."],
};

let connectedUntil = null; // when the page last knew it was receiving updates (shown while it is not)

function showConnection(mode) {
  if (!mode) {
    shell.connection.hidden = true;
    delete shell.connection.dataset.mode;
    connectedUntil = null;
    return;
  }
  const [text, title] = CONNECTION[mode] ?? [mode, ""];
  const receiving = mode === "live" || mode === "polling";
  if (receiving) connectedUntil = null;
  else if (connectedUntil === null && ["live", "polling"].includes(shell.connection.dataset.mode)) connectedUntil = Date.now();
  shell.connection.hidden = false;
  shell.connection.dataset.mode = mode;
  shell.connection.title = title;
  const asOf = connectedUntil === null ? "" : ` · clips as of ${new Date(connectedUntil).toLocaleTimeString()}`;
  shell.connectionText.textContent = text + asOf;
}

let announceTimer = null;
function announce(text) {
  // Emptied first, then filled: a repeated message is announced again.
  shell.announcer.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    shell.announcer.textContent = text;
  }, 100);
}

function setCrumbs(...parts) {
  shell.crumbs.replaceChildren(
    h(
      "ol",
      {},
      parts.map((part, index) =>
        h(
          "li",
          {},
          part.href && index < parts.length - 1
            ? h("a", { href: part.href, text: part.text })
            : h("span", { "aria-current": index === parts.length - 1 ? "page" : null, text: part.text }),
        ),
      ),
    ),
  );
}

function focusHeading() {
  const heading = shell.main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

// Session -----------------------------------------------------------------------------------------------------------

function takeTokenFromAddress() {
  const url = new URL(location.href);
  if (url.searchParams.has("token")) {
    const token = url.searchParams.get("token");
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const session = { token: null, api: null, config: null, view: null };

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = session.api = session.config = null;
  mount(new SignInView(message));
}

async function signIn(token) {
  const api = new Api(token, { onUnauthorized: () => {} });
  const config = await api.get("/api/config"); // throws ApiError(401) for a bad token
  sessionStorage.setItem(TOKEN_KEY, token);
  session.token = token;
  session.config = config;
  session.api = new Api(token, {
    onUnauthorized: () => signOut("Your token is no longer accepted. Paste a valid one to continue."),
  });
  shell.user.textContent = `Signed in as ${config.user}`;
  shell.signOut.hidden = false;
}

function mount(view) {
  if (session.view) session.view.unmount();
  session.view = view;
  shell.main.replaceChildren();
  showConnection(null);
  view.mount(shell.main);
  focusHeading();
}

function route() {
  if (!session.api) return;
  const path = location.hash.replace(/^#/, "") || "/";
  const match = path.match(/^\/projects\/([^/]+)(?:\/clips\/([^/]+))?\/?$/);
  if (match && ID.test(match[1]) && (!match[2] || ID.test(match[2]))) {
    const [, projectId, clipId = null] = match;
    if (session.view instanceof ProjectView && session.view.projectId === projectId) {
      session.view.select(clipId);
    } else {
      mount(new ProjectView(projectId, clipId));
    }
  } else if (!(session.view instanceof ProjectsView) || path !== "/") {
    mount(new ProjectsView());
  }
}

// Sign-in -----------------------------------------------------------------------------------------------------------

class SignInView {
  constructor(message = null) {
    this.message = message;
  }

  mount(main) {
    document.title = "Sign in · cliplog";
    setCrumbs({ text: "Sign in" });
    shell.user.textContent = "";
    shell.signOut.hidden = true;
    const input = h("input", {
      id: "token",
      name: "token",
      type: "password",
      autocomplete: "off",
      required: true,
      "aria-describedby": "token-help token-error",
    });
    const error = h("p", { id: "token-error", class: "field-error", hidden: true });
    const form = h(
      "form",
      { class: "card narrow", "aria-labelledby": "sign-in-title", novalidate: true },
      h("h1", { id: "sign-in-title", text: "Sign in to cliplog" }),
      this.message ? h("p", { class: "notice", role: "alert", text: this.message }) : null,
      h("div", { class: "field" }, h("label", { for: "token", text: "API token" }), input, error),
      h("p", {
        id: "token-help",
        class: "help",
        text: "`cliplog dev` prints an address that signs you in; `cliplog token create USER` makes a token.",
      }),
      h("button", { type: "submit", class: "primary", text: "Sign in" }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) {
        setFieldError(input, error, "Paste your API token.");
        return;
      }
      try {
        await signIn(token);
      } catch (failure) {
        setFieldError(
          input,
          error,
          failure.status === 401 ? "This token is not accepted." : failure.detail ?? String(failure),
        );
        return;
      }
      session.view = null;
      route();
      if (!session.view) mount(new ProjectsView());
    });
    main.append(form);
  }

  unmount() {}
}

function setFieldError(input, errorNode, message) {
  setText(errorNode, message ?? "");
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

// Projects ----------------------------------------------------------------------------------------------------------

const STATUS_WORDS = [
  ["completed", "extracted"],
  ["failed", "failed"],
  ["running", "extracting"],
  ["retrying", "retrying"],
  ["pending", "waiting"],
];

class ProjectsView {
  mount(main) {
    document.title = "Projects · cliplog";
    setCrumbs({ text: "Projects" });
    this.list = h("ul", { class: "projects", "aria-labelledby": "projects-title" });
    this.status = h("p", { class: "muted", text: "Loading your projects…" });
    const input = h("input", {
      id: "new-project",
      name: "project",
      required: true,
      maxlength: 64,
      autocomplete: "off",
      "aria-describedby": "new-project-help new-project-error",
    });
    const error = h("p", { id: "new-project-error", class: "field-error", hidden: true });
    const form = h(
      "form",
      { class: "card", "aria-labelledby": "new-project-title", novalidate: true },
      h("h2", { id: "new-project-title", text: "Start a project" }),
      h("div", { class: "field" }, h("label", { for: "new-project", text: "Project name" }), input, error),
      h("p", {
        id: "new-project-help",
        class: "help",
        text: "Letters, digits, - and _ (up to 64). The project is yours once you add its first clip.",
      }),
      h("button", { type: "submit", class: "primary", text: "Open project" }),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!ID.test(value)) {
        setFieldError(input, error, "Use 1 to 64 letters, digits, - or _.");
        return;
      }
      location.hash = `#/projects/${value}`;
    });
    main.append(
      h(
        "section",
        { class: "card", "aria-labelledby": "projects-title" },
        h("h1", { id: "projects-title", text: "Your projects" }),
        this.status,
        this.list,
      ),
      form,
    );
    this.load();
  }

  async load() {
    let projects;
    try {
      projects = await session.api.get("/api/clips/projects");
    } catch (error) {
      setText(this.status, `Your projects could not be loaded: ${error.detail ?? error}`);
      this.status.append(" ", h("button", { type: "button", text: "Try again", onclick: () => this.load() }));
      return;
    }
    setText(this.status, projects.length ? "" : "No projects yet: start one below.");
    this.list.replaceChildren(
      ...projects.map((project) => {
        const parts = STATUS_WORDS.filter(([status]) => project.statuses[status]).map(
          ([status, word]) => `${project.statuses[status]} ${word}`,
        );
        if (project.slow) parts.push(`${project.slow} taking longer than expected`);
        const summary = `${project.clips} clip${project.clips === 1 ? "" : "s"}${parts.length ? `: ${parts.join(", ")}` : ""}`;
        const summaryId = newId("project-summary");
        return h(
          "li",
          { class: project.statuses.failed || project.slow ? "project attention" : "project" },
          h("a", {
            href: `#/projects/${project.project_id}`,
            text: project.project_id,
            "aria-describedby": summaryId,
          }),
          h("span", { id: summaryId, class: "muted", text: summary }),
        );
      }),
    );
  }

  unmount() {}
}

// One clip's state (used in the sidebar and in the clip's panel) ----------------------------------------------------

class StateView {
  constructor(view, clipId, nameId) {
    this.view = view;
    this.clipId = clipId;
    this.root = h("div", { class: "state", id: newId("state") });
    this.line = h("p", { class: "state-line", id: newId("state-line") });
    this.spinner = h("span", { class: "spinner", "aria-hidden": "true" });
    this.icon = h("span", { class: "state-icon", "aria-hidden": "true" }); // ✓ ✕ ! from CSS, not read out
    this.label = h("span", { class: "state-label" });
    this.time = h("span", { class: "state-time" });
    this.line.append(this.spinner, this.icon, this.label, " ", this.time);
    this.detail = h("p", { class: "state-detail", id: newId("state-detail") });
    this.error = h("p", { class: "state-error" });
    this.advice = h("p", { class: "state-advice" });
    this.retry = h("button", {
      type: "button",
      class: "retry",
      text: "Retry extraction",
      "aria-describedby": nameId,
    });
    this.retryNow = h("button", { type: "button", class: "retry", text: "Retry now", "aria-describedby": nameId });
    this.retry.addEventListener("click", () => this.view.retry(this.clipId, this));
    this.retryNow.addEventListener("click", () => this.view.retry(this.clipId, this));
    this.actionError = h("p", { class: "action-error", role: "alert" });
    this.actions = h("div", { class: "state-actions" }, this.retry, this.retryNow);
    this.root.append(this.line, this.detail, this.error, this.advice, this.actions, this.actionError);
    setText(this.actionError, "");
  }

  /** Ids of the parts that describe the state in one sentence (for aria-describedby). */
  get describedBy() {
    return `${this.line.id} ${this.detail.id}`;
  }

  update(state) {
    this.root.dataset.kind = state.kind;
    this.spinner.hidden = !state.busy;
    setText(this.label, state.label);
    setText(this.time, state.time);
    setText(this.detail, state.detail);
    this.error.hidden = !state.error;
    if (state.error && this.error.dataset.text !== state.error) {
      this.error.dataset.text = state.error;
      this.error.replaceChildren(h("span", { class: "muted", text: "The service said: " }), h("q", { text: state.error }));
    }
    setText(this.advice, state.advice);
    this.setButton(this.retry, state.canRetry);
    this.setButton(this.retryNow, state.canRetryNow);
    this.actions.hidden = !state.canRetry && !state.canRetryNow;
  }

  setButton(button, visible) {
    if (!visible && button.hidden === false && document.activeElement === button) {
      this.view.focusClip(this.clipId); // keep keyboard users in place when the button goes away
    }
    button.hidden = !visible;
  }

  setBusy(busy) {
    for (const button of [this.retry, this.retryNow]) {
      button.setAttribute("aria-disabled", busy ? "true" : "false");
    }
  }

  showActionError(message) {
    setText(this.actionError, message);
  }
}

// A project ---------------------------------------------------------------------------------------------------------

class ProjectView {
  constructor(projectId, clipId) {
    this.projectId = projectId;
    this.selected = clipId;
    this.clips = new Map(); // clip_id -> ClipView (api/views.py)
    this.items = new Map(); // clip_id -> {li, link, state, kind}
    this.feed = null;
    this.ticker = null;
    this.inflight = new Map(); // clip_id -> {again: bool}: one refresh per clip at a time
    this.stale = new Set(); // clips whose refresh failed: fetched again until it works
    this.lastStaleTry = 0;
    this.detail = null; // {clipId, state, player, figure, events, version, videoKey, videoUrl}
    this.alive = true;
  }

  get now() {
    return Date.now();
  }

  mount(main) {
    document.title = `${this.projectId} · cliplog`;
    setCrumbs({ text: "Projects", href: "#/" }, { text: this.projectId });
    this.list = h("ul", { class: "clips", "aria-labelledby": "clips-title" });
    this.listStatus = h("p", { class: "muted", text: "Loading clips…" });
    this.addButton = h("button", { type: "button", class: "primary", text: "Add a clip", onclick: () => this.openAdd() });
    this.sidebar = h(
      "nav",
      { class: "sidebar", "aria-labelledby": "clips-title" },
      h("div", { class: "sidebar-head" }, h("h2", { id: "clips-title", text: "Clips" }), this.addButton),
      this.listStatus,
      this.list,
    );
    this.panel = h("section", { class: "panel", "aria-label": "Selected clip" });
    this.dialog = this.buildAddDialog();
    main.append(
      h("h1", { class: "project-title", text: `Project ${this.projectId}` }),
      h("div", { class: "project" }, this.sidebar, this.panel),
      this.dialog,
    );
    this.renderPanel();
    this.ticker = setInterval(() => this.tick(), 1000);
    this.load();
  }

  unmount() {
    this.alive = false;
    clearInterval(this.ticker);
    clearTimeout(this.loadTimer);
    this.feed?.stop();
    this.feed = null;
    this.dropVideo();
    showConnection(null);
  }

  // Loading and following ---------------------------------------------------------------------------------------

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
      setText(this.listStatus, clips.length ? "" : "No clips yet.");
    } catch (error) {
      if (!this.alive) return;
      if (error.status === 404) {
        setText(this.listStatus, "No clips yet: add the first one.");
        this.renderPanel();
        return; // the project does not exist yet (or is not yours): it is followed once a clip is added
      }
      setText(this.listStatus, `The clips could not be loaded: ${error.detail ?? error}. Trying again…`);
      this.listStatus.append(" ", h("button", { type: "button", text: "Try again now", onclick: () => this.load() }));
      clearTimeout(this.loadTimer);
      this.loadTimer = setTimeout(() => this.alive && !this.feed && this.load(), 5000);
      return;
    }
    if (!this.detail) this.renderPanel();
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
        showConnection(mode);
        if (mode === "live" || mode === "polling") this.refreshStale();
      },
      onReset: () => this.reloadAll(),
      onError: (error) => console.warn("feed:", error),
    });
    showConnection(this.feed.mode);
    this.feed.start();
  }

  onEvent(event) {
    debug.applied[event.position] = (debug.applied[event.position] ?? 0) + 1;
    if (event.project_id !== this.projectId) return;
    this.refresh(event.clip_id);
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
    this.lastStaleTry = this.now;
    for (const clipId of this.stale) this.refresh(clipId);
  }

  async reloadAll() {
    try {
      const clips = await session.api.get(projectPath(this.projectId));
      for (const clip of clips) this.upsert(clip, { force: true });
    } catch (error) {
      console.warn("reload", error);
    }
  }

  // Clips -----------------------------------------------------------------------------------------------------------

  /** Take a ClipView unless a newer version of the clip is already shown. */
  upsert(clip, { quiet = false, force = false } = {}) {
    const known = this.clips.get(clip.clip_id);
    if (known && !force && clip.version < known.version) return;
    this.clips.set(clip.clip_id, clip);
    let item = this.items.get(clip.clip_id);
    if (!item) {
      item = this.buildItem(clip);
      this.items.set(clip.clip_id, item);
      this.list.append(item.li);
      setText(this.listStatus, "");
    }
    this.updateItem(item, clip, quiet);
    if (this.detail && this.detail.clipId === clip.clip_id) this.updatePanel();
    else if (!this.detail && (this.selected === clip.clip_id || this.clips.size === 1)) this.renderPanel();
  }

  buildItem(clip) {
    const nameId = newId("clip-name");
    const link = h("a", { href: `#/projects/${this.projectId}/clips/${clip.clip_id}` });
    const state = new StateView(this, clip.clip_id, nameId);
    const range = h("p", { class: "clip-range muted" });
    const article = h(
      "article",
      { class: "clip-card", "aria-labelledby": nameId, "aria-describedby": state.describedBy },
      h("h3", { id: nameId, class: "clip-name" }, link),
      range,
      state.root,
    );
    const li = h("li", { class: "clip", "data-clip-id": clip.clip_id }, article);
    return { li, link, range, state, kind: null };
  }

  updateItem(item, clip, quiet) {
    setText(item.link, clipName(clip));
    setText(item.range, `${clip.source} · ${position(clip.start)}–${position(clip.end)}`);
    item.li.classList.toggle("selected", this.selected === clip.clip_id);
    if (this.selected === clip.clip_id) item.link.setAttribute("aria-current", "true");
    else item.link.removeAttribute("aria-current");
    const state = clipState(clip, this.now, session.config);
    item.state.update(state);
    item.li.dataset.kind = state.kind;
    if (item.kind !== null && item.kind !== state.kind && !quiet) announce(announcement(clipName(clip), state));
    item.kind = state.kind;
  }

  focusClip(clipId) {
    this.items.get(clipId)?.link.focus();
  }

  tick() {
    if (this.stale.size && this.now - this.lastStaleTry > 3000) this.refreshStale();
    for (const [clipId, item] of this.items) this.updateItem(item, this.clips.get(clipId), false);
    if (this.detail) this.updatePanel({ tick: true });
  }

  async retry(clipId, stateView) {
    if (stateView.retry.getAttribute("aria-disabled") === "true") return;
    stateView.setBusy(true);
    stateView.showActionError("");
    try {
      const { data } = await session.api.post(`${clipPath(this.projectId, clipId)}/retry-extraction`);
      this.upsert(data);
    } catch (error) {
      stateView.showActionError(`Retry refused: ${error.detail ?? error}`);
      this.refresh(clipId);
    } finally {
      stateView.setBusy(false);
    }
  }

  // The selected clip ---------------------------------------------------------------------------------------------

  select(clipId) {
    if (this.selected === clipId) return;
    const previous = this.selected;
    this.selected = clipId;
    for (const id of [previous, clipId]) {
      const item = id && this.items.get(id);
      if (item) this.updateItem(item, this.clips.get(id), true);
    }
    this.renderPanel();
  }

  renderPanel() {
    this.dropVideo();
    const clip = this.selected ? this.clips.get(this.selected) : null;
    if (!clip) {
      this.detail = null;
      const empty = this.clips.size === 0;
      this.panel.replaceChildren(
        h(
          "div",
          { class: "card empty" },
          h("h2", { text: empty ? "No clips yet" : "No clip selected" }),
          h("p", {
            text: empty
              ? "Add a clip: choose a source video from the media folder, a start and an end."
              : "Choose a clip in the list to see its video and its timeline.",
          }),
          empty ? h("button", { type: "button", class: "primary", text: "Add the first clip", onclick: () => this.openAdd() }) : null,
        ),
      );
      return;
    }
    const titleId = newId("detail-title");
    const state = new StateView(this, clip.clip_id, titleId);
    const facts = h("dl", { class: "facts" });
    const player = h("div", { class: "player" });
    const figure = h("figure", { class: "timeline", id: newId("timeline") });
    this.detail = {
      clipId: clip.clip_id,
      title: h("h2", { id: titleId }),
      state,
      facts,
      player,
      figure,
      attempts: [],
      eventsVersion: -1,
      timelineOpen: false,
      videoKey: null,
      videoUrl: null,
      videoAbort: null,
    };
    this.panel.setAttribute("aria-labelledby", titleId);
    this.panel.removeAttribute("aria-label");
    this.panel.replaceChildren(
      h("div", { class: "card" }, this.detail.title, facts, state.root, player),
      h("div", { class: "card" }, h("h3", { text: "What happened" }), figure),
    );
    this.updatePanel();
  }

  updatePanel({ tick = false } = {}) {
    const detail = this.detail;
    const clip = this.clips.get(detail.clipId);
    const now = this.now;
    const state = clipState(clip, now, session.config);
    setText(detail.title, clipName(clip));
    if (!tick) {
      const rows = [
        ["Source", clip.source],
        ["Range", `${position(clip.start)} to ${position(clip.end)} (${+(clip.end - clip.start).toFixed(3)} s)`],
        ["Mode", clip.mode === "accurate" ? "Frame-accurate (re-encoded)" : "Fast (stream copy)"],
        ["Clip id", clip.clip_id],
        ["Run and attempt", `run ${clip.run}, attempt ${clip.attempt} of ${clip.max_attempts}`],
      ];
      detail.facts.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", { text: term }), h("dd", { text: value })]));
    }
    detail.state.update(state);
    this.updateVideo(clip, state);
    if (detail.eventsVersion !== clip.version && !tick) this.loadEvents(clip);
    else if (tick && detail.timelineOpen) detail.timelineOpen = renderTimeline(detail.figure, detail.attempts, now);
  }

  async loadEvents(clip) {
    const detail = this.detail;
    detail.eventsVersion = clip.version;
    try {
      const events = await session.api.get(`${clipPath(this.projectId, clip.clip_id)}/events`);
      if (this.detail !== detail || detail.eventsVersion !== clip.version) return; // a newer read is on its way
      detail.attempts = attemptsFrom(events);
      detail.timelineOpen = renderTimeline(detail.figure, detail.attempts, this.now);
    } catch (error) {
      if (this.detail !== detail || detail.eventsVersion !== clip.version) return;
      detail.eventsVersion = -1;
      detail.figure.replaceChildren(h("figcaption", { text: `The timeline could not be loaded: ${error.detail ?? error}` }));
    }
  }

  updateVideo(clip, state) {
    const detail = this.detail;
    const key = state.kind === "extracted" && clip.file_url ? `${clip.file_url}#${clip.run}.${clip.attempt}` : null;
    if (key === detail.videoKey) return;
    this.dropVideo();
    detail.videoKey = key;
    if (!key) {
      detail.player.replaceChildren();
      return;
    }
    const status = h("p", { class: "muted", text: "Loading the video…" });
    detail.player.replaceChildren(status);
    const abort = new AbortController();
    detail.videoAbort = abort;
    // The file route needs the Authorization header, which a <video src> cannot send: fetch it, play a blob URL.
    session.api
      .objectUrl(clip.file_url, { signal: abort.signal })
      .then((url) => {
        if (abort.signal.aborted || this.detail !== detail) {
          URL.revokeObjectURL(url);
          return;
        }
        detail.videoUrl = url;
        const video = h("video", {
          src: url,
          controls: true,
          preload: "metadata",
          playsinline: true,
          "aria-label": `Video of ${clipName(clip)}`,
        });
        const download = h("a", {
          href: url,
          download: `${clip.clip_id}.mp4`,
          text: "Download the clip",
        });
        detail.player.replaceChildren(video, h("p", {}, download));
      })
      .catch((error) => {
        if (error?.name === "AbortError" || this.detail !== detail) return;
        setText(status, `The video could not be loaded: ${error.detail ?? error}`);
      });
  }

  dropVideo() {
    const detail = this.detail;
    if (!detail) return;
    detail.videoAbort?.abort();
    detail.videoAbort = null;
    if (detail.videoUrl) URL.revokeObjectURL(detail.videoUrl);
    detail.videoUrl = null;
    detail.videoKey = null;
  }

  // Adding a clip -------------------------------------------------------------------------------------------------

  buildAddDialog() {
    const fields = {};
    const field = (name, label, input, help) => {
      const errorNode = h("p", { id: `add-${name}-error`, class: "field-error", hidden: true });
      const helpNode = help ? h("p", { id: `add-${name}-help`, class: "help", text: help }) : null;
      input.id = `add-${name}`;
      input.name = name;
      input.setAttribute("aria-describedby", [helpNode ? helpNode.id : null, errorNode.id].filter(Boolean).join(" "));
      fields[name] = { input, error: errorNode };
      return h("div", { class: "field" }, h("label", { for: input.id, text: label }), input, helpNode, errorNode);
    };
    const source = h("select", { required: true });
    const start = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", required: true });
    const end = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", required: true });
    const name = h("input", { type: "text", maxlength: 200, autocomplete: "off" });
    const copy = h("input", { type: "radio", name: "mode", value: "copy", id: "add-mode-copy", checked: true });
    const accurate = h("input", { type: "radio", name: "mode", value: "accurate", id: "add-mode-accurate" });
    const formError = h("p", { class: "form-error", role: "alert", hidden: true });
    const submit = h("button", { type: "submit", class: "primary", text: "Add clip" });
    const cancel = h("button", { type: "button", text: "Cancel", onclick: () => dialog.close() });
    const form = h(
      "form",
      { novalidate: true, method: "dialog" },
      h("h2", { id: "add-title", text: "Add a clip" }),
      field("source", "Source video", source, "Videos in the media folder."),
      h(
        "div",
        { class: "row" },
        field("start", "Start", start, "Seconds, or minutes:seconds (1:05.5)."),
        field("end", "End", end, "Seconds, or minutes:seconds."),
      ),
      field("name", "Name (optional)", name),
      h(
        "fieldset",
        { class: "field" },
        h("legend", { text: "Mode" }),
        h("div", { class: "choice" }, copy, h("label", { for: "add-mode-copy", text: "Fast: copies the streams, starts at the keyframe before the start" })),
        h("div", { class: "choice" }, accurate, h("label", { for: "add-mode-accurate", text: "Frame-accurate: re-encodes, slower" })),
      ),
      formError,
      h("div", { class: "buttons" }, submit, cancel),
    );
    const dialog = h("dialog", { class: "add-dialog", "aria-labelledby": "add-title" }, form);
    this.add = { dialog, form, fields, formError, submit, source, modes: [copy, accurate] };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submitAdd();
    });
    return dialog;
  }

  async openAdd() {
    const add = this.add;
    for (const { input, error } of Object.values(add.fields)) setFieldError(input, error, null);
    setText(add.formError, "");
    add.dialog.showModal();
    add.source.replaceChildren(h("option", { value: "", text: "Loading the media folder…" }));
    try {
      const media = await session.api.get("/api/media");
      const previous = add.source.dataset.chosen ?? "";
      add.source.replaceChildren(
        h("option", { value: "", text: media.files.length ? "Choose a video…" : "No videos in the media folder" }),
        ...media.files.map((file) => h("option", { value: file.path, text: file.path, selected: file.path === previous })),
      );
      if (media.truncated) setText(add.fields.source.error, "Only the first videos of a large media folder are listed.");
    } catch (error) {
      add.source.replaceChildren(h("option", { value: "", text: "The media folder could not be listed" }));
      setFieldError(add.source, add.fields.source.error, error.detail ?? String(error));
    }
    add.source.focus();
  }

  async submitAdd() {
    const add = this.add;
    const { fields } = add;
    const errors = {};
    const source = fields.source.input.value;
    const start = parseSeconds(fields.start.input.value);
    const end = parseSeconds(fields.end.input.value);
    const name = fields.name.input.value.trim();
    const max = session.config.max_clip_seconds;
    if (!source) errors.source = "Choose a source video.";
    if (start === null) errors.start = "Enter the start as seconds (12.5) or minutes:seconds (0:12.5).";
    else if (start < 0) errors.start = "The start cannot be before 0.";
    if (end === null) errors.end = "Enter the end as seconds (22) or minutes:seconds (0:22).";
    else if (start !== null && start >= 0 && end <= start) errors.end = `The end must be after the start (${position(start)}).`;
    else if (start !== null && start >= 0 && end - start > max) {
      errors.end = `The clip would be ${+(end - start).toFixed(3)} s long; the longest allowed is ${max} s.`;
    }
    this.showAddErrors(errors, null);
    if (Object.keys(errors).length) return;
    add.submit.setAttribute("aria-disabled", "true");
    add.source.dataset.chosen = source;
    const body = { source, start, end, mode: add.modes.find((m) => m.checked)?.value ?? "copy" };
    if (name) body.name = name;
    let result;
    try {
      result = await session.api.post(projectPath(this.projectId), body);
    } catch (error) {
      this.showAddErrors(...apiFieldErrors(error, start));
      return;
    } finally {
      add.submit.removeAttribute("aria-disabled");
    }
    add.dialog.close();
    add.form.reset();
    this.upsert(result.data);
    announce(`${clipName(result.data)}: added`);
    if (!this.feed) this.load(); // the project's first clip: now it can be followed
    location.hash = `#/projects/${this.projectId}/clips/${result.data.clip_id}`;
  }

  showAddErrors(errors, formMessage) {
    const { fields, formError } = this.add;
    let first = null;
    for (const [name, { input, error }] of Object.entries(fields)) {
      setFieldError(input, error, errors[name] ?? null);
      if (errors[name] && !first) first = input;
    }
    setText(formError, formMessage ?? "");
    first?.focus();
  }
}

/** "12", "12.5", "1:05", "1:02:03.5" -> seconds; null when it is none of these. */
function parseSeconds(text) {
  const value = text.trim().replace(",", ".");
  if (!/^-?(\d+(\.\d*)?|\.\d+)$|^\d+(:[0-5]?\d){1,2}(\.\d+)?$/.test(value)) return null;
  if (!value.includes(":")) return Number(value);
  return value.split(":").reduce((total, part) => total * 60 + Number(part), 0);
}

/** An API error for the add-clip form: [per-field messages, message for the whole form]. */
function apiFieldErrors(error, start) {
  const detail = error.detail ?? String(error);
  const field = error.extra?.field;
  if (field && ["source", "start", "end", "name"].includes(field)) return [{ [field]: detail }, null];
  if (error.status === 400 && /start and end|start <|start >=|0 <= start/.test(detail)) {
    return [start !== null && start < 0 ? { start: detail } : { end: detail }, null];
  }
  if (error.status === 400 && /longest clip|long/.test(detail)) return [{ end: detail }, null];
  if (error.status === 404) return [{}, `${detail}: this project belongs to someone else. Choose another name.`];
  return [{}, detail];
}

// Start -------------------------------------------------------------------------------------------------------------

async function start() {
  shell.signOut.addEventListener("click", () => signOut(null));
  window.addEventListener("hashchange", route);
  const token = takeTokenFromAddress();
  if (!token) {
    mount(new SignInView());
    return;
  }
  try {
    await signIn(token);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("The token in this browser tab is not accepted. Paste a valid one.");
    } else {
      shell.main.replaceChildren(
        h(
          "div",
          { class: "card narrow" },
          h("h1", { text: "cliplog cannot be reached" }),
          h("p", { role: "alert", text: error.detail ?? String(error) }),
          h("button", { type: "button", class: "primary", text: "Try again", onclick: () => location.reload() }),
        ),
      );
    }
    return;
  }
  route();
}

start();
