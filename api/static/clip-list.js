/**
 * clip-list.js: the project's sidebar: the "Clips" navigation with the project's buttons in its head ("Add a clip",
 * and "Retry all failed" while some clip has failed, with what it did in a status line),
 * a status line (loading, empty, could not load), and one card per clip (its name linking to the clip, its source
 * and range, its state) with the selected clip marked. Announces a clip's change of state to screen readers.
 */

import { announcement, clipName, clipState, position } from "./clip-state.js";
import { ClipStateView } from "./clip-state-view.js";
import { h, newId, setText } from "./dom.js";
import { announce } from "./shell.js";
import { session } from "./session.js";

export class ClipList {
  /** `selected`: the clip id open in the panel (or null). `actions`: {onAdd(), retry(clipId), cancel(clipId),
   * retryFailed()} (see ClipStateView; retryFailed resolves to the bulk route's {changed, skipped}). */
  constructor(projectId, selected, actions) {
    this.projectId = projectId;
    this.selected = selected;
    this.actions = { ...actions, focusClip: (clipId) => this.focus(clipId) };
    this.items = new Map(); // clip_id -> {li, link, range, state, kind, clip}
    this.list = h("ul", { class: "clips", "aria-labelledby": "clips-title" });
    this.status = h("p", { class: "muted", text: "Loading clips…" });
    this.addButton = h("button", { type: "button", class: "primary", text: "Add a clip", onclick: () => actions.onAdd() });
    this.retryFailedButton = h("button", { type: "button", class: "retry", text: "Retry all failed", hidden: true });
    this.retryFailedButton.addEventListener("click", () => this.retryFailed());
    this.bulkStatus = h("p", { class: "bulk-status muted", role: "status" });
    setText(this.bulkStatus, "");
    this.root = h(
      "nav",
      { class: "sidebar", "aria-labelledby": "clips-title" },
      h(
        "div",
        { class: "sidebar-head" },
        h("h2", { id: "clips-title", text: "Clips" }),
        h("div", { class: "sidebar-actions" }, this.retryFailedButton, this.addButton),
      ),
      this.bulkStatus,
      this.status,
      this.list,
    );
  }

  /** "Retry all failed": one request for the project; says how many clips it retried (and why it skipped any failed
   * one), or why it was refused. */
  async retryFailed() {
    if (this.retryFailedButton.getAttribute("aria-disabled") === "true") return;
    this.retryFailedButton.setAttribute("aria-disabled", "true");
    setText(this.bulkStatus, "Retrying the failed clips…");
    try {
      const { changed, skipped } = await this.actions.retryFailed();
      const stuck = skipped.filter((s) => this.items.get(s.clip_id)?.clip.status === "failed");
      const clips = (n) => `${n} clip${n === 1 ? "" : "s"}`;
      setText(this.bulkStatus, `Retried ${clips(changed)}.${stuck.length ? ` ${clips(stuck.length)} could not be retried.` : ""}`);
    } catch (error) {
      setText(this.bulkStatus, `Retry all failed refused: ${error.detail ?? error}`);
    } finally {
      this.retryFailedButton.setAttribute("aria-disabled", "false");
      this.updateHead();
    }
  }

  /** The head's buttons follow the clips: "Retry all failed" only while some clip has failed. */
  updateHead() {
    const anyFailed = [...this.items.values()].some((item) => item.clip.status === "failed");
    if (!anyFailed && !this.retryFailedButton.hidden && document.activeElement === this.retryFailedButton) {
      this.addButton.focus();
    }
    this.retryFailedButton.hidden = !anyFailed;
  }

  /** The line above the cards; `retry` adds a "Try again now" button that calls it. */
  setStatus(text, { retry = null } = {}) {
    setText(this.status, text);
    if (retry) this.status.append(" ", h("button", { type: "button", text: "Try again now", onclick: () => retry() }));
  }

  /** Show this version of the clip (a card is added for a clip not listed yet). `quiet`: announce nothing. */
  show(clip, { quiet = false } = {}) {
    let item = this.items.get(clip.clip_id);
    if (!item) {
      item = this.buildItem(clip);
      this.items.set(clip.clip_id, item);
      this.list.append(item.li);
      setText(this.status, "");
    }
    this.updateItem(item, clip, quiet);
    this.updateHead();
  }

  /** Mark `clipId` as the open clip; false when it already was. */
  select(clipId) {
    if (this.selected === clipId) return false;
    const previous = this.selected;
    this.selected = clipId;
    for (const id of [previous, clipId]) {
      const item = id && this.items.get(id);
      if (item) this.updateItem(item, item.clip, true);
    }
    return true;
  }

  /** Once a second: the states that change with the clock (elapsed times, countdowns, slow). */
  tick() {
    for (const item of this.items.values()) this.updateItem(item, item.clip, false);
  }

  focus(clipId) {
    this.items.get(clipId)?.link.focus();
  }

  buildItem(clip) {
    const nameId = newId("clip-name");
    const link = h("a", { href: `#/projects/${this.projectId}/clips/${clip.clip_id}` });
    const state = new ClipStateView(clip.clip_id, nameId, this.actions);
    const range = h("p", { class: "clip-range muted" });
    const article = h(
      "article",
      { class: "clip-card", "aria-labelledby": nameId, "aria-describedby": state.describedBy },
      h("h3", { id: nameId, class: "clip-name" }, link),
      range,
      state.root,
    );
    const li = h("li", { class: "clip", "data-clip-id": clip.clip_id }, article);
    return { li, link, range, state, kind: null, clip };
  }

  updateItem(item, clip, quiet) {
    item.clip = clip;
    setText(item.link, clipName(clip));
    setText(item.range, `${clip.source} · ${position(clip.start)}–${position(clip.end)}`);
    item.li.classList.toggle("selected", this.selected === clip.clip_id);
    if (this.selected === clip.clip_id) item.link.setAttribute("aria-current", "true");
    else item.link.removeAttribute("aria-current");
    const state = clipState(clip, Date.now(), session.config);
    item.state.update(state);
    item.li.dataset.kind = state.kind;
    if (item.kind !== null && item.kind !== state.kind && !quiet) announce(announcement(clipName(clip), state));
    item.kind = state.kind;
  }
}
