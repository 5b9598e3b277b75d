/**
 * clip-state-view.js: one clip's state as the page shows it, in the clip list and again in the clip's panel: the
 * state line (spinner or icon, label, elapsed time), a running clip's progress bar (percent and ETA), the sentence
 * under it (for a pending clip its place in the queue), the service's own error message, advice,
 * with FFmpeg's command and last lines behind a "Details" toggle, and the buttons that act on the clip ("Retry
 * extraction", "Retry now", "Cancel extraction") with the message when one is refused.
 *
 * The state itself is decided by clip-state.js; this module only draws it. Whatever acts on a clip (its buttons,
 * what they say while busy and when refused) belongs here; the requests themselves are ProjectClips' (project-clips.js).
 */

import { h, newId, setText } from "./dom.js";

export class ClipStateView {
  /**
   * `nameId`: the id of the clip's name (the buttons' description). `actions.retry(clipId)` and
   * `actions.cancel(clipId)`: promises that reject with an ApiError when the request is refused.
   * `actions.focusClip(clipId)`: where focus goes when a focused button disappears.
   */
  constructor(clipId, nameId, actions) {
    this.clipId = clipId;
    this.actions = actions;
    this.root = h("div", { class: "state", id: newId("state") });
    this.line = h("p", { class: "state-line", id: newId("state-line") });
    this.spinner = h("span", { class: "spinner", "aria-hidden": "true" });
    this.icon = h("span", { class: "state-icon", "aria-hidden": "true" }); // ✓ ✕ ! from CSS, not read out
    this.label = h("span", { class: "state-label" });
    this.time = h("span", { class: "state-time" });
    this.line.append(this.spinner, this.icon, this.label, " ", this.time);
    // A running clip's progress: a native <progress> (role progressbar) named for what it measures.
    this.progressBar = h("progress", { max: "100", value: "0", "aria-label": "Extraction progress" });
    this.progressText = h("span", { class: "progress-text", "aria-hidden": "true" }); // the bar's valuetext, shown
    this.progress = h("div", { class: "state-progress" }, this.progressBar, this.progressText);
    this.detail = h("p", { class: "state-detail", id: newId("state-detail") });
    this.error = h("p", { class: "state-error" });
    this.advice = h("p", { class: "state-advice" });
    this.detailsCommand = h("code");
    this.detailsStderr = h("pre", { class: "details-stderr" });
    this.detailsCommandPart = h("div", {}, h("p", { class: "details-title", text: "Command" }), h("pre", {}, this.detailsCommand));
    this.detailsStderrPart = h("div", {}, h("p", { class: "details-title", text: "FFmpeg's last lines" }), this.detailsStderr);
    this.details = h(
      "details",
      { class: "state-details" },
      h("summary", { text: "Details" }),
      this.detailsCommandPart,
      this.detailsStderrPart,
    );
    this.retryButton = h("button", {
      type: "button",
      class: "retry",
      text: "Retry extraction",
      "aria-describedby": nameId,
    });
    this.retryNowButton = h("button", { type: "button", class: "retry", text: "Retry now", "aria-describedby": nameId });
    this.cancelButton = h("button", {
      type: "button",
      class: "cancel",
      text: "Cancel extraction",
      "aria-describedby": nameId,
    });
    this.retryButton.addEventListener("click", () => this.act("retry", "Retry"));
    this.retryNowButton.addEventListener("click", () => this.act("retry", "Retry"));
    this.cancelButton.addEventListener("click", () => this.act("cancel", "Cancel"));
    this.actionError = h("p", { class: "action-error", role: "alert" });
    this.buttons = h("div", { class: "state-actions" }, this.retryButton, this.retryNowButton, this.cancelButton);
    this.root.append(this.line, this.progress, this.detail, this.error, this.details, this.advice, this.buttons, this.actionError);
    setText(this.actionError, "");
  }

  /** Ids of the parts that describe the state in one sentence (for aria-describedby). */
  get describedBy() {
    return `${this.line.id} ${this.detail.id}`;
  }

  /** Show `state` (clip-state.js clipState). */
  update(state) {
    this.root.dataset.kind = state.kind;
    this.spinner.hidden = !state.busy;
    setText(this.label, state.label);
    setText(this.time, state.time);
    this.showProgress(state.progress);
    setText(this.detail, state.detail);
    this.error.hidden = !state.error;
    if (state.error && this.error.dataset.text !== state.error) {
      this.error.dataset.text = state.error;
      this.error.replaceChildren(h("span", { class: "muted", text: "The service said: " }), h("q", { text: state.error }));
    }
    this.details.hidden = !state.details;
    if (state.details) {
      setText(this.detailsCommand, state.details.command);
      this.detailsCommandPart.hidden = !state.details.command;
      setText(this.detailsStderr, state.details.stderrTail);
      this.detailsStderrPart.hidden = !state.details.stderrTail;
    }
    setText(this.advice, state.advice);
    this.setButton(this.retryButton, state.canRetry);
    this.setButton(this.retryNowButton, state.canRetryNow);
    this.setButton(this.cancelButton, state.canCancel);
    this.buttons.hidden = !state.canRetry && !state.canRetryNow && !state.canCancel;
  }

  showProgress(progress) {
    this.progress.hidden = !progress;
    if (!progress) return;
    this.progressBar.value = progress.percent;
    this.progressBar.setAttribute("aria-valuetext", progress.text);
    setText(this.progressText, progress.text);
  }

  setButton(button, visible) {
    if (!visible && button.hidden === false && document.activeElement === button) {
      this.actions.focusClip(this.clipId); // keep keyboard users in place when the button goes away
    }
    button.hidden = !visible;
  }

  /** Run `actions[name]` once at a time; a refusal shows "<what> refused: <the service's detail>". */
  async act(name, what) {
    if (this.retryButton.getAttribute("aria-disabled") === "true") return;
    this.setBusy(true);
    this.showActionError("");
    try {
      await this.actions[name](this.clipId);
    } catch (error) {
      this.showActionError(`${what} refused: ${error.detail ?? error}`);
    } finally {
      this.setBusy(false);
    }
  }

  setBusy(busy) {
    for (const button of [this.retryButton, this.retryNowButton, this.cancelButton]) {
      button.setAttribute("aria-disabled", busy ? "true" : "false");
    }
  }

  showActionError(message) {
    setText(this.actionError, message);
  }
}
