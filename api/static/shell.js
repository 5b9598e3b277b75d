/**
 * shell.js: the parts of the page that stay while views come and go (index.html): the breadcrumbs, the connection
 * indicator and whether the page is up to date, who is signed in, and the live region that announces clip changes to screen readers.
 */

import { h } from "./dom.js";

export const shell = {
  main: document.getElementById("main"),
  crumbs: document.getElementById("crumbs"),
  connection: document.getElementById("connection"),
  connectionText: document.getElementById("connection-text"),
  sync: document.getElementById("sync"),
  user: document.getElementById("user"),
  signOut: document.getElementById("sign-out"),
  announcer: document.getElementById("announcer"),
};

const CONNECTION = {
  live: ["Live", "Updates arrive as they happen."],
  polling: ["Polling", "The live connection is unavailable; the page asks the server for updates."],
  reconnecting: ["Reconnecting…", "The page is trying to reach the server again."],
  offline: ["Offline", "The server cannot be reached; the page keeps trying."],
};

let connectedUntil = null; // when the page last knew it was receiving updates (shown while it is not)

/** Show the feed's mode (feed-client.js MODES) in the header; null hides the indicator. */
export function showConnection(mode) {
  if (!mode) {
    shell.connection.hidden = true;
    delete shell.connection.dataset.mode;
    connectedUntil = null;
    return;
  }
  const [text, title] = CONNECTION[mode] ?? [mode, ""];
  const receiving = mode === "live" || mode === "polling";
  if (receiving) connectedUntil = null;
  else if (connectedUntil === null && ["live", "polling"].includes(shell.connection.dataset.mode)) connectedUntil = Date.now();
  shell.connection.hidden = false;
  shell.connection.dataset.mode = mode;
  shell.connection.title = title;
  const asOf = connectedUntil === null ? "" : ` · clips as of ${new Date(connectedUntil).toLocaleTimeString()}`;
  shell.connectionText.textContent = text + asOf;
}

/** Whether the page has every change so far (the feed's `caught_up`): true "Up to date", false "Catching up…" (the
 * socket is sending what happened while the page was away), null hidden (not live: the indicator says why). */
export function showUpToDate(upToDate) {
  shell.sync.hidden = upToDate === null;
  shell.sync.dataset.state = upToDate ? "up-to-date" : "catching-up";
  shell.sync.textContent = upToDate === null ? "" : upToDate ? "Up to date" : "Catching up…";
}

let announceTimer = null;
export function announce(text) {
  // Emptied first, then filled: a repeated message is announced again.
  shell.announcer.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    shell.announcer.textContent = text;
  }, 100);
}

export function setCrumbs(...parts) {
  shell.crumbs.replaceChildren(
    h(
      "ol",
      {},
      parts.map((part, index) =>
        h(
          "li",
          {},
          part.href && index < parts.length - 1
            ? h("a", { href: part.href, text: part.text })
            : h("span", { "aria-current": index === parts.length - 1 ? "page" : null, text: part.text }),
        ),
      ),
    ),
  );
}

export function focusHeading() {
  const heading = shell.main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}
