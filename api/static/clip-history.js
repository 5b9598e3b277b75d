/**
 * clip-history.js: the "What happened" card of the clip's panel: the clip's events (`GET .../clips/{id}/events`),
 * read again whenever the clip's version changes, drawn as a timeline of its attempts (timeline.js); while an attempt
 * is still open the timeline is redrawn every second.
 */

import { clipPath } from "./api.js";
import { h, newId } from "./dom.js";
import { session } from "./session.js";
import { attemptsFrom, renderTimeline } from "./timeline.js";

export class ClipHistory {
  constructor(projectId) {
    this.projectId = projectId;
    this.figure = h("figure", { class: "timeline", id: newId("timeline") });
    this.root = h("div", { class: "card" }, h("h3", { text: "What happened" }), this.figure);
    this.attempts = [];
    this.eventsVersion = -1; // the clip version whose events are read (or being read); -1: none
    this.open = false; // an attempt is still under way: redraw as time passes
    this.closed = false;
  }

  /** The clip changed (`tick`: only the clock did). */
  update(clip, { tick = false } = {}) {
    if (this.eventsVersion !== clip.version && !tick) this.load(clip);
    else if (tick && this.open) this.open = renderTimeline(this.figure, this.attempts, Date.now());
  }

  async load(clip) {
    this.eventsVersion = clip.version;
    const current = () => !this.closed && this.eventsVersion === clip.version; // else a newer read is on its way
    try {
      const events = await session.api.get(`${clipPath(this.projectId, clip.clip_id)}/events`);
      if (!current()) return;
      this.attempts = attemptsFrom(events);
      this.open = renderTimeline(this.figure, this.attempts, Date.now());
    } catch (error) {
      if (!current()) return;
      this.eventsVersion = -1;
      this.figure.replaceChildren(h("figcaption", { text: `The timeline could not be loaded: ${error.detail ?? error}` }));
    }
  }

  /** The panel shows another clip (or none): answers still on their way are dropped. */
  close() {
    this.closed = true;
  }
}
