// chatfeed's web page: log in, see the people and follow them, post, and watch the timeline live.
// It speaks the HTTP API (/api/..., see /api/openapi.json) of the worker that served it and, when
// that one goes away or asks to be left, of another live worker (GET /api/workers), resuming the
// stream after the last seq it showed: every post once, in order. The session token stays in this
// tab (sessionStorage) and travels only in the Authorization header, never in a cookie.
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  user: null,
  lastSeq: 0,
  // The cluster the shown seqs belong to (X-Chatfeed-Cluster of the stream's answer).
  cluster: '',
  // Origins (scheme://host:port) of the workers known to serve the API; the page's own first.
  origins: [location.origin],
  current: location.origin,
  // Origins that failed lately, with when: tried again after FAILED_FOR_MS.
  failed: new Map(),
  abort: null,
  running: false,
};

const FAILED_FOR_MS = 3000;
const MAX_BACKOFF_MS = 5000;

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A JSON call to `path` on `origin`; throws ApiError with the server's words on a refusal. */
async function api(path, { method = 'GET', body, origin = state.current, headers = {} } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(origin + path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await res.json();
  } catch (_) {
    data = null;
  }
  if (!res.ok) {
    const message = (data && data.error) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message, data && data.code);
  }
  return data;
}

/** `call(origin)` on the current worker, then on the others, until one answers (not a
 * refusal: a refusal is the cluster's answer and is thrown at once). */
async function anyWorker(call) {
  let last = null;
  for (const origin of candidates()) {
    try {
      const r = await call(origin);
      state.current = origin;
      return r;
    } catch (e) {
      if (e instanceof ApiError && e.status !== 503 && e.status !== 502) throw e;
      state.failed.set(origin, Date.now());
      last = e;
    }
  }
  throw last || new Error('no worker answers');
}

/** The origins to try, the current one first, those that failed lately last. */
function candidates() {
  const now = Date.now();
  const all = [state.current, ...state.origins.filter((o) => o !== state.current)];
  const fresh = all.filter((o) => !(now - (state.failed.get(o) || 0) < FAILED_FOR_MS));
  const stale = all.filter((o) => !fresh.includes(o));
  return [...fresh, ...stale];
}

async function refreshWorkers() {
  try {
    // Origins, `http://host:port` or `https://…`.
    const r = await api('/api/workers');
    const known = (r.workers || []).filter((o) => /^https?:\/\//.test(o));
    state.origins = [...new Set([location.origin, ...known])];
  } catch (_) {
    // The list is a hint; the stream carries on with what is known.
  }
}

/** Shows the stream's state; the element also records, for people and tests, which worker
 * serves the stream (`data-origin`) and how often it had to reconnect (`data-reconnects`). */
function setConn(kind, text, origin) {
  const el = $('conn');
  if (kind === 'reconnecting' && el.dataset.state === 'live') {
    el.dataset.reconnects = String(Number(el.dataset.reconnects || '0') + 1);
  }
  el.className = `conn ${kind}`;
  el.textContent = text;
  el.dataset.state = kind;
  if (origin !== undefined) el.dataset.origin = origin;
}

function showFeed(visible) {
  $('login-view').hidden = visible;
  $('feed-view').hidden = !visible;
  $('logout').hidden = !visible;
  $('me').hidden = !visible;
  $('me').textContent = visible ? state.user : '';
}

function fmtTime(ms) {
  const d = new Date(ms);
  return d.toLocaleString();
}

/** Shows `p` unless a post with its seq or a later one is shown already (a resumed stream may
 * repeat nothing, but the page does not trust it to). */
function addPost(p) {
  if (p.seq <= state.lastSeq) return;
  state.lastSeq = p.seq;
  const list = $('timeline');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = document.createElement('li');
  li.dataset.seq = String(p.seq);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const author = document.createElement('span');
  author.className = 'author';
  author.textContent = p.author;
  meta.append(author, ` · ${fmtTime(p.ts_ms)} · #${p.seq}`);
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = p.text;
  li.append(meta, text);
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** The cluster's history was restored from a backup: the posts shown may not all be in it, and
 * its seqs may name other posts. Says so and starts the timeline again. */
function startAgain() {
  state.lastSeq = 0;
  state.cluster = '';
  $('timeline').replaceChildren();
  $('post-error').textContent =
    "the cluster's history was restored from a backup: the timeline starts again from it";
}

/** Reads one server-sent event stream until it ends; returns why: 'move', 'restored' or
 * 'end'. */
async function readEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let event = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return 'end';
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (event === 'post' && data.length) addPost(JSON.parse(data.join('\n')));
        if (event === 'move') return 'move';
        if (event === 'error' && data.length) {
          try {
            if (JSON.parse(data.join('\n')).code === 'HISTORY_RESTORED') return 'restored';
          } catch (_) { /* another error: the stream ends */ }
        }
        event = 'message';
        data = [];
      } else if (line.startsWith('event:')) {
        event = line.slice(6).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      }
    }
  }
}

/** Keeps the timeline stream open, on whichever worker answers, until logout. */
async function runStream() {
  if (state.running) return;
  state.running = true;
  let backoff = 200;
  while (state.token) {
    const origin = candidates()[0];
    const abort = new AbortController();
    state.abort = abort;
    try {
      const q = state.lastSeq
        ? `?after=${state.lastSeq}&cluster=${encodeURIComponent(state.cluster)}`
        : '';
      const res = await fetch(`${origin}/api/timeline/stream${q}`, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' },
        signal: abort.signal,
      });
      if (res.status === 401) {
        let msg = 'your session ended: log in again';
        try { msg = (await res.json()).error || msg; } catch (_) { /* the default */ }
        endSession(msg);
        break;
      }
      if (res.status === 409) {
        let code = '';
        try { code = (await res.json()).code; } catch (_) { /* not ours */ }
        if (code === 'HISTORY_RESTORED') {
          startAgain();
          continue;
        }
      }
      if (!res.ok) throw new Error(`${res.status}`);
      if (!state.cluster) state.cluster = res.headers.get('X-Chatfeed-Cluster') || '';
      state.current = origin;
      setConn('live', 'live', origin);
      backoff = 200;
      refreshWorkers();
      const why = await readEvents(res);
      if (why === 'move') state.failed.set(origin, Date.now());
      if (why === 'restored') {
        startAgain();
        continue;
      }
    } catch (_) {
      if (!state.token) break;
      state.failed.set(origin, Date.now());
    }
    if (!state.token) break;
    setConn('reconnecting', 'reconnecting…');
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
  state.running = false;
}

async function loadUsers() {
  $('users-error').textContent = '';
  try {
    let after = '';
    let users = [];
    let following = [];
    for (let page = 0; page < 1000; page++) {
      const q = after ? `?after=${encodeURIComponent(after)}` : '';
      const r = await anyWorker((origin) => api(`/api/users${q}`, { origin }));
      users = users.concat(r.users || []);
      if (page === 0) following = r.following || [];
      if (!r.next || r.next <= after) break;
      after = r.next;
    }
    renderUsers(users, new Set(following));
  } catch (e) {
    $('users-error').textContent = e.message;
  }
}

function renderUsers(users, following) {
  const ul = $('users');
  ul.replaceChildren();
  for (const u of users) {
    if (u === state.user) continue;
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.textContent = u;
    const b = document.createElement('button');
    const follows = following.has(u);
    b.type = 'button';
    b.className = follows ? 'secondary' : '';
    b.textContent = follows ? 'Unfollow' : 'Follow';
    b.dataset.user = u;
    b.addEventListener('click', () => toggleFollow(u, follows));
    li.append(name, b);
    ul.append(li);
  }
}

async function toggleFollow(user, follows) {
  $('users-error').textContent = '';
  try {
    await anyWorker((origin) =>
      follows
        ? api(`/api/follows/${encodeURIComponent(user)}`, { method: 'DELETE', origin })
        : api('/api/follows', { method: 'POST', body: { target: user }, origin }));
    await loadUsers();
  } catch (e) {
    $('users-error').textContent = e.message;
  }
}

/**
 * A fresh idempotency key laid out as a UUIDv7: the time in milliseconds first, then random bits.
 * One user's keys then sort in the order they were made, which the masters index for less than
 * random ones (a new key lands where the user's last one did).
 */
function newPostKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Posts `text` once: one idempotency key for every retry, so a post commits at most once. */
async function post(text) {
  const key = newPostKey();
  const deadline = Date.now() + 15000;
  let wait = 200;
  for (;;) {
    try {
      return await anyWorker((origin) => api('/api/posts', {
        method: 'POST', body: { text }, origin, headers: { 'Idempotency-Key': key },
      }));
    } catch (e) {
      if (e instanceof ApiError && e.status !== 503) throw e;
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 2000);
    }
  }
}

function endSession(message) {
  state.token = null;
  state.user = null;
  state.lastSeq = 0;
  state.cluster = '';
  sessionStorage.removeItem('chatfeed');
  if (state.abort) state.abort.abort();
  $('timeline').replaceChildren();
  setConn('', '');
  showFeed(false);
  $('login-error').textContent = message || '';
}

function startSession(user, token) {
  state.user = user;
  state.token = token;
  sessionStorage.setItem('chatfeed', JSON.stringify({ user, token }));
  showFeed(true);
  setConn('reconnecting', 'connecting…');
  refreshWorkers().then(loadUsers);
  runStream();
  $('post-text').focus();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  const user = $('login-user').value.trim();
  const password = $('login-password').value;
  try {
    const r = await anyWorker((origin) => api('/api/login', {
      method: 'POST', body: { user, password }, origin,
    }));
    $('login-password').value = '';
    startSession(user, r.token);
  } catch (e) {
    $('login-error').textContent = e.message;
  }
});

$('post-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('post-text');
  const text = input.value;
  if (!text.trim()) return;
  $('post-error').textContent = '';
  input.disabled = true;
  try {
    await post(text);
    input.value = '';
  } catch (e) {
    $('post-error').textContent = e.message;
  } finally {
    input.disabled = false;
    input.focus();
  }
});

$('logout').addEventListener('click', async () => {
  try {
    await api('/api/logout', { method: 'POST' });
  } catch (_) {
    // Ended here anyway; the server ends the session when it hears of it.
  }
  endSession('logged out');
});

// A reload keeps the tab's session.
try {
  const saved = JSON.parse(sessionStorage.getItem('chatfeed') || 'null');
  if (saved && saved.token) startSession(saved.user, saved.token);
} catch (_) {
  sessionStorage.removeItem('chatfeed');
}
