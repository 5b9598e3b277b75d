/**
 * app.js: cliplog's web UI. Plain ES modules, no build step, no dependencies. This module signs in and routes:
 *
 *   #/                                 the caller's projects (projects-view.js)
 *   #/projects/{project}               a project: the clip list, the add-clip form (project-view.js)
 *   #/projects/{project}/clips/{clip}  the same with one clip open: its state, its player, its timeline
 *
 * The token comes from `?token=` (what `cliplog dev` prints); it is kept in sessionStorage and removed from the
 * address bar. Clip states are decided by clip-state.js with the page's clock, so a spinner never turns for longer
 * than CLIPLOG_SLOW_AFTER without saying so. Updates come from FeedClient (feed-client.js) through ProjectClips
 * (project-clips.js, which also keeps `window.cliplogDebug` for tests).
 *
 * The modules, by what they show:
 *   shell.js            the header (breadcrumbs, connection, who is signed in) and the screen-reader announcer
 *   projects-view.js    the projects page
 *   project-view.js     a project's page, wired from:
 *     clip-list.js        the sidebar: the project's buttons and one card per clip
 *     clip-detail.js      the open clip's panel: facts, state, player.js, clip-history.js ("What happened")
 *     add-clip-form.js    the "Add a clip" dialog
 *     project-clips.js    the clips kept current (load, feed, refresh, retry); draws nothing
 *   clip-state-view.js  one clip's state and the buttons that act on it (in its card and in its panel)
 *   clip-state.js       what a clip shows, and timeline.js its attempts: pure rules (tests/js)
 *   api.js              the HTTP API; feed-client.js the event feed
 *   dom.js              DOM helpers; session.js who is signed in
 */

import { Api, ApiError, ID } from "./api.js";
import { h, setFieldError } from "./dom.js";
import { ProjectView } from "./project-view.js";
import { ProjectsView } from "./projects-view.js";
import { session } from "./session.js";
import { focusHeading, setCrumbs, shell, showConnection } from "./shell.js";

const TOKEN_KEY = "cliplog.token";

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
