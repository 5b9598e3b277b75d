/**
 * session.js: who is signed in. app.js signs in and out (it alone writes these); views read them when they need
 * them, so a request made after signing out finds no api rather than an old token.
 *
 *   token   the API token (also kept in sessionStorage by app.js)
 *   api     an Api (api.js) with that token; signs out when the token stops being accepted
 *   config  GET /api/config: {user, poll_after, slow_after, max_clip_seconds, max_attempts,
 *           file_links}
 *   view    the view on the page (app.js mount)
 */

export const session = { token: null, api: null, config: null, view: null };
