/**
 * clip-history.js: the "What happened" card of the clip's panel: the clip's events (`GET .../clips/{id}/events`),
 * read again whenever the clip's version changes, drawn as a timeline of its attempts (timeline.js); while an attempt
 * is still open the timeline is redrawn every second. Below it, "Step through history": a slider over the clip's
 * story (`GET .../clips/{id}/story`: after each event the state and the reason, from the service's own domain code),
 * and "Download history" (`GET .../clips/{id}/export`: the clip's export as a JSON lines file).
 */

import { clipPath } from "./api.js";
import { h, newId, setText } from "./dom.js";
import { session } from "./session.js";
import { attemptsFrom, renderTimeline } from "./timeline.js";

export class ClipHistory {
  constructor(projectId) {
    this.projectId = projectId;
    this.figure = h("figure", { class: "timeline", id: newId("timeline") });
    this.story = new StorySlider(projectId);
    this.root = h("div", { class: "card" }, h("h3", { text: "What happened" }), this.figure, this.story.root);
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
    this.story.load(clip, current);
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

const when = (iso) => new Date(iso).toLocaleString();

/** "Step through history": a range input over the clip's events; after each, the state and the reason. */
class StorySlider {
  constructor(projectId) {
    this.projectId = projectId;
    this.steps = [];
    const title = h("h4", { id: newId("story-title"), text: "Step through history" });
    this.slider = h("input", {
      type: "range",
      min: "1",
      max: "1",
      value: "1",
      step: "1",
      "aria-labelledby": title.id,
      oninput: () => this.show(),
    });
    this.position = h("p", { class: "story-position", "aria-live": "polite" });
    this.event = h("p", { class: "story-event" });
    this.state = h("p", { class: "story-state" });
    this.reason = h("p", { class: "story-reason" });
    this.error = h("p", { class: "error", role: "alert", hidden: true });
    this.download = h("button", { type: "button", text: "Download history", onclick: () => this.save() });
    this.root = h(
      "section",
      { class: "story", "aria-labelledby": title.id },
      title,
      this.slider,
      h("output", { class: "story-step" }, this.position, this.event, this.state, this.reason),
      this.error,
      this.download,
    );
    this.clipId = null;
  }

  async load(clip, current) {
    this.clipId = clip.clip_id;
    try {
      const steps = await session.api.get(`${clipPath(this.projectId, clip.clip_id)}/story`);
      if (!current()) return;
      const atEnd = this.steps.length === 0 || Number(this.slider.value) === this.steps.length;
      this.steps = steps;
      this.slider.max = String(Math.max(steps.length, 1));
      this.slider.disabled = steps.length < 2;
      if (atEnd) this.slider.value = String(steps.length); // follow the newest event unless the user went back
      setText(this.error, "");
      this.show();
    } catch (error) {
      if (!current()) return;
      setText(this.error, `The history could not be loaded: ${error.detail ?? error}`);
    }
  }

  show() {
    const n = Number(this.slider.value);
    const step = this.steps[n - 1];
    if (!step) return;
    const text = `Event ${n} of ${this.steps.length}`;
    this.slider.setAttribute("aria-valuetext", `${text}: ${step.type}`);
    setText(this.position, text);
    setText(this.event, `${step.type} (version ${step.version}) at ${when(step.recorded_at)}`);
    let state = `Then: ${step.status}, attempt ${step.attempt} of ${step.max_attempts}`;
    if (step.run > 1) state += ` of run ${step.run}`;
    if (step.next_attempt_at) state += `, next attempt at ${when(step.next_attempt_at)}`;
    setText(this.state, state);
    setText(this.reason, `Why: ${step.reason}`);
  }

  /** The clip's export, fetched with the token, saved as a file. */
  async save() {
    const clipId = this.clipId;
    try {
      const url = await session.api.objectUrl(`${clipPath(this.projectId, clipId)}/export`);
      const link = h("a", { href: url, download: `${this.projectId}-${clipId}.cliplog.jsonl`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      setText(this.error, "");
    } catch (error) {
      setText(this.error, `The history could not be downloaded: ${error.detail ?? error}`);
    }
  }
}
