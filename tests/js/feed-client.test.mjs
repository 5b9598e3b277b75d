// The browser feed client's state machine under node's test runner (`node --test tests/js`), with a fake clock,
// fake WebSockets and a fake fetch: reconnection with backoff and jitter, polling while the socket is down or
// silent, back to live, dedup, reset, refusals.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FeedClient, FeedError } from "../../api/static/feed-client.js";

const flush = () => new Promise((resolve) => setImmediate(resolve));

class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.now + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Move time forward by `ms`, firing due timers in order (and letting promises settle in between). */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
    await flush();
  }

  pending() {
    return [...this.timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }
}

function fakeEnvironment({ random = () => 0.5 } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  const requests = [];

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.closed = false;
      sockets.push(this);
    }
    close() {
      this.closed = true;
    }
    // what the server does
    open() {
      this.onopen?.({});
    }
    send(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    event(event) {
      this.send({ type: "event", event });
    }
    drop(code = 1006, reason = "") {
      this.closed = true;
      this.onclose?.({ code, reason });
    }
  }

  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      const request = { url: new URL(url), init, resolve, reject, settled: false };
      request.respond = (status, body) => {
        request.settled = true;
        resolve({ status, ok: status >= 200 && status < 300, json: async () => body });
      };
      request.fail = () => {
        request.settled = true;
        reject(new TypeError("fetch failed"));
      };
      init?.signal?.addEventListener("abort", () => {
        request.settled = true;
        request.aborted = true;
        reject(new DOMException("aborted", "AbortError"));
      });
      requests.push(request);
    });

  return { clock, sockets, requests, FakeWebSocket, fetch, random };
}

function makeClient(env, options = {}) {
  const log = { events: [], modes: [], resets: [], errors: [] };
  const client = new FeedClient({
    baseUrl: "http://feed.test",
    token: "tok",
    after: null,
    pollAfter: 30,
    pollWait: 25,
    WebSocket: env.FakeWebSocket,
    fetch: env.fetch,
    setTimeout: env.clock.setTimeout,
    clearTimeout: env.clock.clearTimeout,
    random: env.random,
    onEvent: (event) => log.events.push(event.position),
    onMode: (mode) => log.modes.push(mode),
    onReset: (detail) => log.resets.push(detail),
    onError: (error) => log.errors.push(error),
    ...options,
  });
  return { client, log };
}

const ev = (position) => ({ position, cursor: `c${position}`, type: "extraction.requested", project_id: "p" });
const page = (positions, next) => ({ events: positions.map(ev), next_cursor: next ?? `c${positions.at(-1)}` });
const openPolls = (env) => env.requests.filter((r) => !r.settled);

test("connects with the token and the cursor, applies events in order, reports live", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, { after: "c7", projectId: "p1" });
  client.start();
  assert.equal(env.sockets.length, 1);
  const url = new URL(env.sockets[0].url);
  assert.equal(url.protocol, "ws:");
  assert.equal(url.pathname, "/api/events/ws");
  assert.equal(url.searchParams.get("after"), "c7");
  assert.equal(url.searchParams.get("project_id"), "p1");
  assert.equal(url.searchParams.get("token"), "tok");
  env.sockets[0].open();
  assert.equal(client.mode, "live");
  for (const p of [8, 9, 10]) env.sockets[0].event(ev(p));
  env.sockets[0].send({ type: "ping" });
  assert.deepEqual(log.events, [8, 9, 10]);
  assert.equal(client.cursor, "c10");
  assert.equal(client.position, 10);
  assert.equal(env.requests.length, 0, "no polling while live");
  client.stop();
});

test("applies each event once: duplicates and older positions are dropped", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env);
  client.start();
  const socket = env.sockets[0];
  socket.open();
  for (const p of [1, 2, 2, 3, 1, 3, 4]) socket.event(ev(p));
  assert.deepEqual(log.events, [1, 2, 3, 4]);
  client.stop();
});

test("caught_up and progress go to their callbacks and never move the cursor; unknown types are ignored", async () => {
  const env = fakeEnvironment();
  const progress = [];
  const caughtUp = [];
  const { client, log } = makeClient(env, {
    after: "c3",
    onProgress: (message) => progress.push(message),
    onCaughtUp: (cursor) => caughtUp.push(cursor),
  });
  client.start();
  const socket = env.sockets[0];
  socket.open();
  socket.event(ev(4));
  socket.send({ type: "caught_up", cursor: "c4" });
  const message = { type: "progress", project_id: "p", clip_id: "c", run: 1, attempt: 1, percent: 42.5, eta_seconds: 3 };
  socket.send(message);
  socket.send({ type: "something-new", cursor: "c99", position: 99 });
  socket.event(ev(5));
  assert.deepEqual(log.events, [4, 5]);
  assert.deepEqual(caughtUp, ["c4"]);
  assert.deepEqual(progress, [message]);
  assert.equal(client.cursor, "c5");
  assert.equal(client.position, 5);
  assert.deepEqual(log.errors, []);
  client.stop();
});

test("a throwing onProgress is reported and does not stop the feed", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, {
    onProgress: () => {
      throw new Error("bad progress handler");
    },
  });
  client.start();
  const socket = env.sockets[0];
  socket.open();
  socket.send({ type: "progress", project_id: "p", clip_id: "c", run: 1, attempt: 1, percent: 1, eta_seconds: null });
  socket.event(ev(1));
  assert.deepEqual(log.events, [1]);
  assert.equal(log.errors.length, 1);
  assert.equal(client.mode, "live");
  client.stop();
});

test("reconnects with exponential backoff and jitter, for ever", async () => {
  let r = 0;
  const draws = [0, 1, 0.5];
  const env = fakeEnvironment({ random: () => draws[r++ % draws.length] });
  const { client } = makeClient(env, { backoffBase: 0.5, backoffMax: 30 });
  client.start();
  const delays = [];
  for (let failure = 1; failure <= 14; failure++) {
    const socket = env.sockets.at(-1);
    socket.drop(1006);
    const before = env.clock.now;
    const count = env.sockets.length;
    // (the poll started by the first failure stays in flight: it draws no jitter meanwhile)
    while (env.sockets.length === count) await env.clock.advance(10);
    delays.push(env.clock.now - before);
  }
  // d = min(30, 0.5 * 2^n) s, delay in [d/2, d]; the jitter draws 0, 1, 0.5 give d/2, d, 3d/4
  delays.forEach((delay, i) => {
    const d = Math.min(30, 0.5 * 2 ** (i + 1)) * 1000;
    const expected = [d / 2, d, 0.75 * d][i % 3];
    assert.ok(Math.abs(delay - expected) <= 10, `attempt ${i + 1}: waited ${delay} ms, expected ${expected}`);
  });
  assert.ok(delays.at(-1) <= 30_000 && delays.at(-1) >= 15_000, "capped at backoffMax");
  assert.equal(env.sockets.length, 15, "never gives up");
  assert.equal(openPolls(env).length, 1, "one poll loop, however many failures");
  // a socket that delivers a message resets the backoff
  env.sockets.at(-1).open();
  env.sockets.at(-1).send({ type: "ping" });
  env.sockets.at(-1).drop(1006);
  assert.ok(env.clock.pending()[0] <= 1000, `next attempt after ${env.clock.pending()[0]} ms`);
  client.stop();
});

test("polls while the socket is down, then goes back to the socket when it recovers", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env);
  client.start();
  env.sockets[0].open();
  env.sockets[0].event(ev(1));
  env.sockets[0].drop(1006);
  assert.equal(client.mode, "reconnecting");
  await env.clock.advance(0);
  // polling starts at once, from the cursor, with the token in the header; the first request answers at once
  assert.equal(env.requests.length, 1);
  const poll = env.requests[0];
  assert.equal(poll.url.pathname, "/api/events");
  assert.equal(poll.url.searchParams.get("after"), "c1");
  assert.equal(poll.url.searchParams.get("wait"), "0");
  assert.equal(poll.init.headers.Authorization, "Bearer tok");
  poll.respond(200, page([2, 3]));
  await env.clock.advance(0);
  assert.equal(client.mode, "polling");
  assert.deepEqual(log.events, [1, 2, 3]);
  // the next one is a long poll, from the new cursor
  assert.equal(openPolls(env).length, 1);
  assert.equal(openPolls(env)[0].url.searchParams.get("after"), "c3");
  assert.equal(openPolls(env)[0].url.searchParams.get("wait"), "25");
  // the reconnection timer fires: the new socket resumes from the latest cursor
  while (env.sockets.length === 1) await env.clock.advance(100);
  const socket = env.sockets[1];
  assert.equal(new URL(socket.url).searchParams.get("after"), "c3");
  socket.open();
  assert.equal(client.mode, "live");
  await env.clock.advance(0);
  assert.equal(openPolls(env).length, 0, "the in-flight poll was aborted");
  // the socket's backlog repeats nothing the poll already applied
  for (const p of [3, 4]) socket.event(ev(p));
  assert.deepEqual(log.events, [1, 2, 3, 4]);
  assert.deepEqual(log.modes, ["reconnecting", "live", "reconnecting", "polling", "live"]);
  client.stop();
});

test("polls when the socket is silent for pollAfter seconds, closes it and reconnects", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, { pollAfter: 30 });
  client.start();
  const silent = env.sockets[0];
  silent.open();
  silent.event(ev(1));
  await env.clock.advance(29_000);
  assert.equal(env.requests.length, 0, "not yet");
  silent.send({ type: "ping" }); // any message restarts the silence timer
  await env.clock.advance(29_000);
  assert.equal(env.requests.length, 0);
  await env.clock.advance(1_100);
  assert.equal(env.requests.length, 1, "silent for 30 s: polling");
  assert.ok(silent.closed, "the silent socket is closed");
  env.requests[0].respond(200, page([2]));
  await env.clock.advance(0);
  assert.equal(client.mode, "polling");
  // events the dead socket might still deliver are ignored
  silent.event(ev(5));
  assert.deepEqual(log.events, [1, 2]);
  while (env.sockets.length === 1) await env.clock.advance(100);
  env.sockets[1].open();
  assert.equal(client.mode, "live");
  env.sockets[1].event(ev(3));
  assert.deepEqual(log.events, [1, 2, 3]);
  client.stop();
});

test("a socket that never opens counts as silent", async () => {
  const env = fakeEnvironment();
  const { client } = makeClient(env, { pollAfter: 5 });
  client.start();
  await env.clock.advance(5_000);
  assert.equal(env.requests.length, 1);
  assert.ok(env.sockets[0].closed);
  client.stop();
});

test("interleaved poll and socket deliveries apply every event once, in order", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env);
  client.start();
  env.sockets[0].open();
  env.sockets[0].event(ev(1));
  env.sockets[0].drop(1006);
  await env.clock.advance(0);
  env.requests[0].respond(200, page([2, 3, 4]));
  while (env.sockets.length === 1) await env.clock.advance(100);
  const socket = env.sockets[1]; // opened with after=c4
  socket.open();
  for (const p of [5, 6]) socket.event(ev(p));
  socket.drop(4408, "too slow"); // reconnect promptly
  await env.clock.advance(0);
  env.requests.at(-1).respond(200, page([6, 7]));
  await env.clock.advance(1_000);
  const again = env.sockets[2];
  assert.equal(new URL(again.url).searchParams.get("after"), "c7");
  again.open();
  for (const p of [7, 8]) again.event(ev(p));
  assert.deepEqual(log.events, [1, 2, 3, 4, 5, 6, 7, 8]);
  client.stop();
});

test("offline when the network is down, reconnecting when the server errs", async () => {
  const env = fakeEnvironment();
  const { client } = makeClient(env);
  client.start();
  env.sockets[0].drop(1006);
  await env.clock.advance(0);
  env.requests[0].fail();
  await env.clock.advance(0);
  assert.equal(client.mode, "offline");
  while (openPolls(env).length === 0) await env.clock.advance(100);
  openPolls(env)[0].respond(503, { status_code: 503, detail: "down" });
  await env.clock.advance(0);
  assert.equal(client.mode, "reconnecting");
  while (openPolls(env).length === 0) await env.clock.advance(100);
  openPolls(env)[0].respond(200, page([], "c0"));
  await env.clock.advance(0);
  assert.equal(client.mode, "polling");
  client.stop();
});

test("a reset (another log) starts again from latest with a fresh position", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, { after: "old" });
  client.start();
  env.sockets[0].open();
  env.sockets[0].event(ev(100));
  env.sockets[0].send({ type: "reset", detail: "another log" });
  env.sockets[0].drop(4410, "another log");
  assert.deepEqual(log.resets, ["another log"], "reported once");
  assert.equal(client.position, 0);
  // "latest" is pinned with one poll before the socket connects
  await env.clock.advance(0);
  const pin = openPolls(env)[0];
  assert.equal(pin.url.searchParams.get("after"), "latest");
  assert.equal(pin.url.searchParams.get("wait"), "0");
  pin.respond(200, page([], "head"));
  await env.clock.advance(0);
  assert.equal(env.sockets.length, 2);
  assert.equal(new URL(env.sockets[1].url).searchParams.get("after"), "head");
  env.sockets[1].open();
  env.sockets[1].event(ev(3)); // positions of the new log start low again
  assert.deepEqual(log.events, [100, 3]);
  client.stop();
});

test("a 410 from a poll resets too", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, { after: "old" });
  client.start();
  env.sockets[0].drop(1006);
  await env.clock.advance(0);
  env.requests[0].respond(410, { status_code: 410, detail: "from another log" });
  await env.clock.advance(0);
  assert.deepEqual(log.resets, ["from another log"]);
  assert.equal(openPolls(env)[0].url.searchParams.get("after"), "latest");
  client.stop();
});

test("refusals are reported and retried at the slowest pace, never given up", async () => {
  const env = fakeEnvironment();
  const { client, log } = makeClient(env, { backoffMax: 30 });
  client.start();
  env.sockets[0].open();
  env.sockets[0].drop(4401, "unknown or revoked token");
  assert.ok(log.errors[0] instanceof FeedError);
  assert.equal(log.errors[0].status, 401);
  const reconnectIn = Math.max(...env.clock.pending());
  assert.ok(reconnectIn >= 15_000 && reconnectIn <= 30_000, `reconnects in ${reconnectIn} ms`);
  await env.clock.advance(0);
  openPolls(env)[0].respond(401, { status_code: 401, detail: "unknown or revoked token" });
  await env.clock.advance(0);
  assert.equal(log.errors.length, 2);
  await env.clock.advance(31_000);
  assert.equal(env.sockets.length, 2, "tried again");
  client.stop();
});

test("a throwing onEvent is reported and does not stop the feed", async () => {
  const env = fakeEnvironment();
  const seen = [];
  const { client, log } = makeClient(env, {
    onEvent: (event) => {
      seen.push(event.position);
      if (event.position === 2) throw new Error("UI bug");
    },
  });
  client.start();
  env.sockets[0].open();
  for (const p of [1, 2, 3]) env.sockets[0].event(ev(p));
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(log.errors[0].message, "UI bug");
  client.stop();
});

test("stop closes everything; start resumes from the cursor", async () => {
  const env = fakeEnvironment();
  const { client } = makeClient(env);
  client.start();
  env.sockets[0].open();
  env.sockets[0].event(ev(4));
  client.stop();
  assert.ok(env.sockets[0].closed);
  assert.equal(env.clock.pending().length, 0, "no timer left");
  client.start();
  assert.equal(new URL(env.sockets[1].url).searchParams.get("after"), "c4");
  client.stop();
});
