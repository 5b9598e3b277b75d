/**
 * add-clip-form.js: the "Add a clip" dialog: a source video from the media folder (GET /api/media), a start and an
 * end (seconds or minutes:seconds), an optional name and the mode. The form checks what it can before it posts, and
 * puts the API's refusal beside the field it is about (or above the buttons when it is about no field).
 */

import { projectPath } from "./api.js";
import { position } from "./clip-state.js";
import { h, setFieldError, setText } from "./dom.js";
import { session } from "./session.js";

export class AddClipForm {
  /** `onAdded(clip)`: the API took the clip (a ClipView); the dialog is closed and the form reset by then. */
  constructor(projectId, { onAdded }) {
    this.projectId = projectId;
    this.onAdded = onAdded;
    this.fields = {};
    const field = (name, label, input, help) => {
      const errorNode = h("p", { id: `add-${name}-error`, class: "field-error", hidden: true });
      const helpNode = help ? h("p", { id: `add-${name}-help`, class: "help", text: help }) : null;
      input.id = `add-${name}`;
      input.name = name;
      input.setAttribute("aria-describedby", [helpNode ? helpNode.id : null, errorNode.id].filter(Boolean).join(" "));
      this.fields[name] = { input, error: errorNode };
      return h("div", { class: "field" }, h("label", { for: input.id, text: label }), input, helpNode, errorNode);
    };
    this.source = h("select", { required: true });
    const start = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", required: true });
    const end = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", required: true });
    const name = h("input", { type: "text", maxlength: 200, autocomplete: "off" });
    const copy = h("input", { type: "radio", name: "mode", value: "copy", id: "add-mode-copy", checked: true });
    const accurate = h("input", { type: "radio", name: "mode", value: "accurate", id: "add-mode-accurate" });
    this.modes = [copy, accurate];
    this.formError = h("p", { class: "form-error", role: "alert", hidden: true });
    this.submitButton = h("button", { type: "submit", class: "primary", text: "Add clip" });
    const cancel = h("button", { type: "button", text: "Cancel", onclick: () => this.dialog.close() });
    this.form = h(
      "form",
      { novalidate: true, method: "dialog" },
      h("h2", { id: "add-title", text: "Add a clip" }),
      field("source", "Source video", this.source, "Videos in the media folder."),
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
      this.formError,
      h("div", { class: "buttons" }, this.submitButton, cancel),
    );
    this.dialog = h("dialog", { class: "add-dialog", "aria-labelledby": "add-title" }, this.form);
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  /** Open the dialog with no errors and the media folder's videos to choose from. */
  async open() {
    for (const { input, error } of Object.values(this.fields)) setFieldError(input, error, null);
    setText(this.formError, "");
    this.dialog.showModal();
    const source = this.source;
    source.replaceChildren(h("option", { value: "", text: "Loading the media folder…" }));
    try {
      const media = await session.api.get("/api/media");
      const previous = source.dataset.chosen ?? "";
      source.replaceChildren(
        h("option", { value: "", text: media.files.length ? "Choose a video…" : "No videos in the media folder" }),
        ...media.files.map((file) => h("option", { value: file.path, text: file.path, selected: file.path === previous })),
      );
      if (media.truncated) setText(this.fields.source.error, "Only the first videos of a large media folder are listed.");
    } catch (error) {
      source.replaceChildren(h("option", { value: "", text: "The media folder could not be listed" }));
      setFieldError(source, this.fields.source.error, error.detail ?? String(error));
    }
    source.focus();
  }

  async submit() {
    const { fields } = this;
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
    this.showErrors(errors, null);
    if (Object.keys(errors).length) return;
    this.submitButton.setAttribute("aria-disabled", "true");
    this.source.dataset.chosen = source;
    const body = { source, start, end, mode: this.modes.find((m) => m.checked)?.value ?? "copy" };
    if (name) body.name = name;
    let result;
    try {
      result = await session.api.post(projectPath(this.projectId), body);
    } catch (error) {
      this.showErrors(...apiFieldErrors(error, start));
      return;
    } finally {
      this.submitButton.removeAttribute("aria-disabled");
    }
    this.dialog.close();
    this.form.reset();
    this.onAdded(result.data);
  }

  showErrors(errors, formMessage) {
    let first = null;
    for (const [name, { input, error }] of Object.entries(this.fields)) {
      setFieldError(input, error, errors[name] ?? null);
      if (errors[name] && !first) first = input;
    }
    setText(this.formError, formMessage ?? "");
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
