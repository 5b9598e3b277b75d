/**
 * player.js: an extracted clip's video and its download link, in the clip's panel. Two ways, after the settings
 * (`session.config.file_links`):
 *
 * - The file route serves the bytes (local storage, or s3 with CLIPLOG_S3_SERVE=proxy). It needs the Authorization
 *   header, which a <video src> cannot send: the bytes are fetched and played from a blob URL, which is revoked when
 *   the clip, its run or its attempt changes, or the panel closes.
 * - The file route redirects to the bucket (s3, CLIPLOG_S3_SERVE=redirect). A fetch with the token would follow the
 *   redirect to another origin, which the bucket would have to allow (CORS) and which would download the whole
 *   clip first; instead the player asks `GET .../file-link` for the presigned URL and gives it to the <video>
 *   itself, which reads it with ranges like any video on another site (no CORS needed). The URL expires
 *   (CLIPLOG_S3_URL_EXPIRES): when a link that played then fails, a fresh link is fetched and playing resumes where
 *   it was.
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
    const failed = (error) => {
      if (error?.name === "AbortError" || abort.signal.aborted) return;
      setText(status, `The video could not be loaded: ${error.detail ?? error}`);
    };
    if (session.config?.file_links) {
      this.link(clip, abort).then((link) => this.showDirect(clip, link, abort, status), failed);
      return;
    }
    session.api
      .objectUrl(clip.file_url, { signal: abort.signal })
      .then((url) => {
        if (abort.signal.aborted) {
          URL.revokeObjectURL(url);
          return;
        }
        this.url = url;
        this.show(clip, url, { download: `${clip.clip_id}.mp4` });
      })
      .catch(failed);
  }

  /** `GET .../file-link`: {url, direct, expires_at}. */
  link(clip, abort) {
    return session.api.get(`${clip.file_url}-link`, { signal: abort.signal });
  }

  /** Play a presigned URL. When a link that has played fails (it expired: CLIPLOG_S3_URL_EXPIRES), fetch a fresh
   * one and go on where the video was; a link that fails before it ever loaded means the store refuses or is
   * away: say so, and ask no further (a fresh link would fail the same way, again and again). */
  showDirect(clip, link, abort, status) {
    if (abort.signal.aborted) return;
    if (!link.direct) {
      setText(status, "The video could not be loaded: the server offers no direct link");
      return;
    }
    const video = this.show(clip, link.url, { newTab: true });
    let loaded = false; // whether the current link has delivered the video
    video.addEventListener("loadedmetadata", () => {
      loaded = true;
    });
    video.addEventListener("error", () => {
      if (abort.signal.aborted) return;
      if (!loaded) {
        if (!this.root.querySelector(".player-error")) {
          this.root.append(h("p", { class: "muted player-error", text: "The video could not be loaded from storage." }));
        }
        return;
      }
      loaded = false;
      const at = video.currentTime;
      const playing = !video.paused;
      this.link(clip, abort).then(
        (fresh) => {
          if (abort.signal.aborted || !fresh.direct) return;
          video.addEventListener(
            "loadedmetadata",
            () => {
              video.currentTime = at;
              if (playing) video.play().catch(() => {});
            },
            { once: true },
          );
          video.src = fresh.url;
          this.root.querySelector("a")?.setAttribute("href", fresh.url);
        },
        () => {},
      );
    });
  }

  /** The <video> and its download link; returns the video. */
  show(clip, url, { download = null, newTab = false } = {}) {
    const video = h("video", {
      src: url,
      controls: true,
      preload: "metadata",
      playsinline: true,
      "aria-label": `Video of ${clipName(clip)}`,
    });
    // A link to another origin cannot name the download (the browser ignores `download`): it opens the video.
    const attributes = download ? { href: url, download } : { href: url, target: "_blank", rel: "noreferrer" };
    const link = h("a", { ...attributes, text: download ? "Download the clip" : "Open the clip" });
    this.root.replaceChildren(video, h("p", {}, link));
    return video;
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
