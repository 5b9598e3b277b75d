/**
 * project-view.js: a project's page (#/projects/{project}[/clips/{clip}]): the clip list (clip-list.js) beside the
 * open clip's panel (clip-detail.js), the add-clip dialog (add-clip-form.js), and the clips kept current by
 * ProjectClips (project-clips.js). This module only wires them together and ticks the clock once a second.
 */

import { AddClipForm } from "./add-clip-form.js";
import { ClipPanel } from "./clip-detail.js";
import { ClipList } from "./clip-list.js";
import { clipName } from "./clip-state.js";
import { h } from "./dom.js";
import { ProjectClips } from "./project-clips.js";
import { announce, setCrumbs, showConnection, showUpToDate } from "./shell.js";

export class ProjectView {
  constructor(projectId, clipId) {
    this.projectId = projectId;
    this.initialClipId = clipId;
    this.ticker = null;
  }

  mount(main) {
    document.title = `${this.projectId} · cliplog`;
    setCrumbs({ text: "Projects", href: "#/" }, { text: this.projectId });
    const actions = {
      onAdd: () => this.form.open(),
      retry: (clipId) => this.clips.retry(clipId),
      cancel: (clipId) => this.clips.cancel(clipId),
      retryFailed: () => this.clips.retryFailed(),
      focusClip: (clipId) => this.list.focus(clipId),
    };
    this.clips = new ProjectClips(this.projectId, {
      onClip: (clip, options) => this.showClip(clip, options),
      onLoaded: (clips) => {
        this.list.setStatus(clips.length ? "" : "No clips yet.");
        if (!this.panel.clipId) this.renderPanel();
      },
      onMissing: () => {
        this.list.setStatus("No clips yet: add the first one.");
        this.renderPanel();
      },
      onLoadFailed: (error) => {
        this.list.setStatus(`The clips could not be loaded: ${error.detail ?? error}. Trying again…`, {
          retry: () => this.clips.load(),
        });
      },
      onMode: (mode) => {
        showConnection(mode);
        showUpToDate(mode === "live" ? false : null); // a (new) socket sends its backlog first
      },
      onCaughtUp: () => showUpToDate(true),
    });
    this.list = new ClipList(this.projectId, this.initialClipId, actions);
    this.panel = new ClipPanel(this.projectId, actions);
    this.form = new AddClipForm(this.projectId, { onAdded: (clip) => this.added(clip) });
    main.append(
      h("h1", { class: "project-title", text: `Project ${this.projectId}` }),
      h("div", { class: "project" }, this.list.root, this.panel.root),
      this.form.dialog,
    );
    this.renderPanel();
    this.ticker = setInterval(() => this.tick(), 1000);
    this.clips.load();
  }

  unmount() {
    clearInterval(this.ticker);
    this.clips.stop();
    this.panel.close();
    showConnection(null);
    showUpToDate(null);
  }

  /** Open `clipId` (null: none), as the address says. */
  select(clipId) {
    if (this.list.select(clipId)) this.renderPanel();
  }

  renderPanel() {
    const selected = this.list.selected;
    this.panel.show(selected ? this.clips.get(selected) : null, { empty: this.clips.size === 0 });
  }

  showClip(clip, { quiet }) {
    this.list.show(clip, { quiet });
    if (this.panel.clipId === clip.clip_id) this.panel.update(clip);
    else if (!this.panel.clipId && (this.list.selected === clip.clip_id || this.clips.size === 1)) this.renderPanel();
  }

  added(clip) {
    this.clips.upsert(clip);
    announce(`${clipName(clip)}: added`);
    if (!this.clips.following) this.clips.load(); // the project's first clip: now it can be followed
    location.hash = `#/projects/${this.projectId}/clips/${clip.clip_id}`;
  }

  tick() {
    this.clips.tick();
    this.list.tick();
    this.panel.tick();
  }
}
