/**
 * clip-detail.js: the panel beside the clip list. With a clip open: a card with its name, its facts (source, range,
 * mode, id, run and attempt), its state (clip-state-view.js) and its video (player.js), then the "What happened" card
 * (clip-history.js). With none: why not, and for an empty project a button to add the first clip.
 */

import { clipName, clipState, position } from "./clip-state.js";
import { ClipHistory } from "./clip-history.js";
import { ClipStateView } from "./clip-state-view.js";
import { h, newId, setText } from "./dom.js";
import { Player } from "./player.js";
import { session } from "./session.js";

export class ClipPanel {
  /** `actions`: {onAdd(), retry(clipId), cancel(clipId), focusClip(clipId)} (see ClipStateView). */
  constructor(projectId, actions) {
    this.projectId = projectId;
    this.actions = actions;
    this.root = h("section", { class: "panel", "aria-label": "Selected clip" });
    this.detail = null; // the open clip's ClipDetail
  }

  /** The id of the clip shown, or null. */
  get clipId() {
    return this.detail?.clip.clip_id ?? null;
  }

  /** Show `clip`, or (null) that none is open: `empty` says the project has no clips at all. */
  show(clip, { empty = false } = {}) {
    this.close();
    if (!clip) {
      this.detail = null;
      this.root.replaceChildren(
        h(
          "div",
          { class: "card empty" },
          h("h2", { text: empty ? "No clips yet" : "No clip selected" }),
          h("p", {
            text: empty
              ? "Add a clip: choose a source video from the media folder, a start and an end."
              : "Choose a clip in the list to see its video and its timeline.",
          }),
          empty
            ? h("button", { type: "button", class: "primary", text: "Add the first clip", onclick: () => this.actions.onAdd() })
            : null,
        ),
      );
      return;
    }
    this.detail = new ClipDetail(this.projectId, clip, this.actions);
    this.root.setAttribute("aria-labelledby", this.detail.title.id);
    this.root.removeAttribute("aria-label");
    this.root.replaceChildren(...this.detail.cards);
    this.detail.update(clip);
  }

  /** A newer version of the open clip. */
  update(clip) {
    this.detail.update(clip);
  }

  /** Once a second: what changes with the clock. */
  tick() {
    this.detail?.update(this.detail.clip, { tick: true });
  }

  close() {
    this.detail?.close();
  }
}

class ClipDetail {
  constructor(projectId, clip, actions) {
    this.clip = clip;
    this.title = h("h2", { id: newId("detail-title") });
    this.state = new ClipStateView(clip.clip_id, this.title.id, actions);
    this.facts = h("dl", { class: "facts" });
    this.player = new Player();
    this.history = new ClipHistory(projectId);
    this.cards = [h("div", { class: "card" }, this.title, this.facts, this.state.root, this.player.root), this.history.root];
  }

  update(clip, { tick = false } = {}) {
    this.clip = clip;
    const state = clipState(clip, Date.now(), session.config);
    setText(this.title, clipName(clip));
    if (!tick) {
      const rows = [
        ["Source", clip.source],
        ["Range", `${position(clip.start)} to ${position(clip.end)} (${+(clip.end - clip.start).toFixed(3)} s)`],
        ["Mode", clip.mode === "accurate" ? "Frame-accurate (re-encoded)" : "Fast (stream copy)"],
        ["Clip id", clip.clip_id],
        ["Run and attempt", `run ${clip.run}, attempt ${clip.attempt} of ${clip.max_attempts}`],
      ];
      this.facts.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", { text: term }), h("dd", { text: value })]));
    }
    this.state.update(state);
    this.player.update(clip, state);
    this.history.update(clip, { tick });
  }

  close() {
    this.player.drop();
    this.history.close();
  }
}
