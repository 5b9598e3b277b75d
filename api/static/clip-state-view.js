/**
 * clip-state-view.js: one clip's state as the page shows it, in the clip list and again in the clip's panel: the
 * state line (spinner or icon, label, elapsed time), the sentence under it, the service's own error message, advice,
 * and the buttons that act on the clip ("Retry extraction", "Retry now") with the message when one is refused.
 *
 * The state itself is decided by clip-state.js; this module only draws it. Whatever acts on a clip (its buttons,
 * what they say while busy and when refused) belongs here; the requests themselves are ProjectClips' (project-clips.js).
 */

import { h, newId, setText } from "./dom.js";

export class ClipStateView {
  /**
   * `nameId`: the id of the clip's name (the buttons' description). `actions.retry(clipId)`: a promise that rejects
   * with an ApiError when the retry is refused. `actions.focusClip(clipId)`: where focus goes when a focused button
   * disappears.
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
    this.detail = h("p", { class: "state-detail", id: newId("state-detail") });
    this.error = h("p", { class: "state-error" });
    this.advice = h("p", { class: "state-advice" });
    this.retryButton = h("button", {
      type: "button",
      class: "retry",
      text: "Retry extraction",
      "aria-describedby": nameId,
    });
    this.retryNowButton = h("button", { type: "button", class: "retry", text: "Retry now", "aria-describedby": nameId });
    this.retryButton.addEventListener("click", () => this.retry());
    this.retryNowButton.addEventListener("click", () => this.retry());
    this.actionError = h("p", { class: "action-error", role: "alert" });
    this.buttons = h("div", { class: "state-actions" }, this.retryButton, this.retryNowButton);
    this.root.append(this.line, this.detail, this.error, this.advice, this.buttons, this.actionError);
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
    setText(this.detail, state.detail);
    this.error.hidden = !state.error;
    if (state.error && this.error.dataset.text !== state.error) {
      this.error.dataset.text = state.error;
      this.error.replaceChildren(h("span", { class: "muted", text: "The service said: " }), h("q", { text: state.error }));
    }
    setText(this.advice, state.advice);
    this.setButton(this.retryButton, state.canRetry);
    this.setButton(this.retryNowButton, state.canRetryNow);
    this.buttons.hidden = !state.canRetry && !state.canRetryNow;
  }

  setButton(button, visible) {
    if (!visible && button.hidden === false && document.activeElement === button) {
      this.actions.focusClip(this.clipId); // keep keyboard users in place when the button goes away
    }
    button.hidden = !visible;
  }

  async retry() {
    if (this.retryButton.getAttribute("aria-disabled") === "true") return;
    this.setBusy(true);
    this.showActionError("");
    try {
      await this.actions.retry(this.clipId);
    } catch (error) {
      this.showActionError(`Retry refused: ${error.detail ?? error}`);
    } finally {
      this.setBusy(false);
    }
  }

  setBusy(busy) {
    for (const button of [this.retryButton, this.retryNowButton]) {
      button.setAttribute("aria-disabled", busy ? "true" : "false");
    }
  }

  showActionError(message) {
    setText(this.actionError, message);
  }
}
