/**
 * api.js: the HTTP API with the bearer token. Every failure becomes an ApiError carrying the API's JSON error
 * (`status_code`, `detail`, `extra`), or status 0 when the server could not be reached at all.
 */

export class ApiError extends Error {
  constructor(status, detail, extra = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.extra = extra;
  }
}

export class Api {
  constructor(token, { onUnauthorized = () => {} } = {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async fetch(path, { method = "GET", body, signal } = {}) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      throw new ApiError(0, "cliplog cannot be reached: check the connection, then try again");
    }
    if (!response.ok) {
      let data = null;
      try {
        data = await response.json();
      } catch {
        /* not JSON */
      }
      const error = new ApiError(response.status, data?.detail ?? `HTTP ${response.status}`, data?.extra ?? null);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async get(path, options) {
    return (await this.fetch(path, options)).json();
  }

  /** POST; returns {status, data}: callers tell "created" (201) from "already there" (200). */
  async post(path, body, options) {
    const response = await this.fetch(path, { ...options, method: "POST", body });
    return { status: response.status, data: await response.json() };
  }

  /** The bytes at `path` as an object URL (for <video>: the file route needs the Authorization header). */
  async objectUrl(path, options) {
    const response = await this.fetch(path, options);
    return URL.createObjectURL(await response.blob());
  }
}

/** What a project_id or clip_id may be (API.md; api/auth.py ID_PATTERN). */
export const ID = /^[A-Za-z0-9_-]{1,64}$/;

export const projectPath = (projectId) => `/api/clips/projects/${encodeURIComponent(projectId)}/clips`;
export const clipPath = (projectId, clipId) => `${projectPath(projectId)}/${encodeURIComponent(clipId)}`;
