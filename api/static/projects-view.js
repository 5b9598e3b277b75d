/**
 * projects-view.js: the caller's projects (#/, GET /api/clips/projects), each with its clips counted by state and
 * marked when one needs attention (failed, or taking longer than expected), and a form to start a project.
 */

import { ID } from "./api.js";
import { h, newId, setFieldError, setText } from "./dom.js";
import { session } from "./session.js";
import { setCrumbs } from "./shell.js";

const STATUS_WORDS = [
  ["completed", "extracted"],
  ["failed", "failed"],
  ["running", "extracting"],
  ["retrying", "retrying"],
  ["pending", "waiting"],
  ["cancelled", "cancelled"],
];

export class ProjectsView {
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
