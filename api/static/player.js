/**
 * player.js: an extracted clip's video and its download link, in the clip's panel. The file route needs the
 * Authorization header, which a <video src> cannot send: the bytes are fetched and played from a blob URL, which is
 * revoked when the clip, its run or its attempt changes, or the panel closes.
 */

import { clipName } from "./clip-state.js";
import { h, setText } from "./dom.js";
import { session } from "./session.js";

export class Player {
  constructor() {
    this.root = h("div", { class: "player" });
    this.key = null; // which file is shown: file_url#run.attempt, or null for none
    this.url = null; // its blob URL
    this.abort = null; // the download on its way
  }

  /** Show the clip's file when it is extracted (`state`: clip-state.js clipState), nothing otherwise. */
  update(clip, state) {
    const key = state.kind === "extracted" && clip.file_url ? `${clip.file_url}#${clip.run}.${clip.attempt}` : null;
    if (key === this.key) return;
    this.drop();
    this.key = key;
    if (!key) {
      this.root.replaceChildren();
      return;
    }
    const status = h("p", { class: "muted", text: "Loading the video…" });
    this.root.replaceChildren(status);
    const abort = new AbortController();
    this.abort = abort;
    session.api
      .objectUrl(clip.file_url, { signal: abort.signal })
      .then((url) => {
        if (abort.signal.aborted) {
          URL.revokeObjectURL(url);
          return;
        }
        this.url = url;
        const video = h("video", {
          src: url,
          controls: true,
          preload: "metadata",
          playsinline: true,
          "aria-label": `Video of ${clipName(clip)}`,
        });
        const download = h("a", {
          href: url,
          download: `${clip.clip_id}.mp4`,
          text: "Download the clip",
        });
        this.root.replaceChildren(video, h("p", {}, download));
      })
      .catch((error) => {
        if (error?.name === "AbortError" || abort.signal.aborted) return;
        setText(status, `The video could not be loaded: ${error.detail ?? error}`);
      });
  }

  /** Stop any download and release the blob URL. */
  drop() {
    this.abort?.abort();
    this.abort = null;
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    this.key = null;
  }
}
