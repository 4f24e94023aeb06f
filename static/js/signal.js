// The signaling client (docs/signaling.md): one WebSocket per page, the envelope, reconnection
// with back-off, resume of the device session, and a bounded queue for frames sent while the
// socket is away. Listeners get the whole envelope.

export const QUEUE_LIMIT = 200;
// Close codes after which reconnecting is pointless: not signed in / signed out, disabled.
const FINAL_CLOSE_CODES = new Set([4401, 4403]);
// "Service restart": the server process is stopping and told us to go elsewhere, now.
const RESTART_CLOSE_CODE = 4012;
// A connection attempt that neither opens nor fails this long is given up and retried: one that
// lands in the backlog of a server process that is stopping never hears back.
const CONNECT_TIMEOUT_MS = 5000;
// A frame the server could not handle for now (its database or Redis is away: an error with
// `retryAfter`) is sent again after that many seconds, up to this many times; listeners hear
// the error only when the last try fails too. The frames sent last are kept for that.
const RESEND_TRIES = 6;
const RESEND_KEPT = 64;

export class Signal {
  constructor(path = "/ws/signal/") {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.url = `${scheme}://${location.host}${path}`;
    // Query parameters to add on every (re)connect, e.g. the credential grant to keep.
    this.params = () => ({});
    this.handlers = new Map();
    this.retry = 0;
    this.closedByUs = false;
    this.finished = false; // closed for good (4401/4403, or by the page)
    this.ready = false; // open, welcomed, and resumed (or fresh): frames go straight out
    this.resuming = false;
    this.session = null;
    this.lastSeq = 0;
    this.queue = [];
    this.welcome = null;
    this.sent = new Map(); // frame id -> {frame, tries}: the last RESEND_KEPT frames
    // For the browser tests and for debugging: what the numbering saw.
    this.counters = { frames: 0, duplicates: 0, gaps: 0, resumes: 0, resumeFailures: 0, replayed: 0, resent: 0 };
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
    return this;
  }

  off(type, fn) {
    const list = this.handlers.get(type);
    if (list) this.handlers.set(type, list.filter((f) => f !== fn));
    return this;
  }

  // A listener that throws must not stop the others, nor the reconnect that follows a close.
  dispatch(type, msg) {
    for (const fn of [...(this.handlers.get(type) || []), ...(this.handlers.get("*") || [])]) {
      try {
        fn(msg);
      } catch (err) {
        console.error(`signal: a ${type} listener failed`, err);
      }
    }
  }

  connect() {
    const url = new URL(this.url);
    for (const [key, value] of Object.entries(this.params())) if (value) url.searchParams.set(key, value);
    const ws = new WebSocket(url.href);
    this.ws = ws;
    const opening = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => clearTimeout(opening);
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this.receive(msg);
    };
    ws.onclose = (ev) => {
      clearTimeout(opening);
      if (this.ws !== ws) return;
      this.ready = false;
      this.resuming = false;
      this.dispatch("close", { code: ev.code });
      if (this.closedByUs || FINAL_CLOSE_CODES.has(ev.code)) {
        this.finished = true;
        this.dispatch("finished", { code: ev.code });
        return;
      }
      // A process that is being restarted sends its sockets elsewhere at once (with a little
      // jitter, so they don't all land in the same instant); other drops back off.
      const delay = ev.code === RESTART_CLOSE_CODE
        ? 250 + Math.random() * 750
        : Math.min(10000, 500 * 2 ** this.retry++);
      setTimeout(() => this.connect(), delay);
    };
    return this;
  }

  receive(msg) {
    if (msg.type === "welcome") {
      this.retry = 0;
      if (this.session) {
        // A reconnect: ask for what we missed. Until the answer, frames are numbered in the
        // socket's fresh session, so they are neither deduplicated nor counted.
        this.resuming = true;
        this.pendingWelcome = msg;
        this.counters.resumes += 1;
        this.ws.send(JSON.stringify({
          v: 1, type: "resume", id: crypto.randomUUID(), body: { session: this.session, lastSeq: this.lastSeq },
        }));
        return;
      }
      this.session = msg.body.session;
      this.lastSeq = msg.seq || 0;
      this.welcome = msg;
      this.ready = true;
      this.dispatch("welcome", msg);
      this.flush();
      return;
    }
    if (this.resuming) {
      if (msg.type === "resumed") {
        this.resuming = false;
        this.ready = true;
        this.counters.replayed += msg.body.replayed;
        this.dispatch("resumed", msg);
        this.flush();
        return;
      }
      if (msg.type === "error" && msg.body.code === "resume_failed") {
        // Carry on with the fresh session: the page joins its calls again.
        this.resuming = false;
        this.counters.resumeFailures += 1;
        this.session = this.pendingWelcome.body.session;
        this.lastSeq = msg.seq || 0;
        this.welcome = this.pendingWelcome;
        this.ready = true;
        this.dispatch("welcome", this.pendingWelcome);
        this.flush();
        return;
      }
      this.dispatch(msg.type, msg);
      return;
    }
    if (typeof msg.seq === "number") {
      if (msg.seq <= this.lastSeq) { this.counters.duplicates += 1; return; }
      if (msg.seq > this.lastSeq + 1) this.counters.gaps += 1;
      this.lastSeq = msg.seq;
    }
    this.counters.frames += 1;
    if (msg.type === "error" && this.resendLater(msg)) return;
    this.dispatch(msg.type, msg);
  }

  // The server says the frame may work in a moment: the same frame (same id, so replies still
  // match what the page waits for) goes again then, unless too many tries failed already.
  resendLater(msg) {
    const kept = msg.ref && typeof msg.body.retryAfter === "number" && this.sent.get(msg.ref);
    if (!kept || kept.tries >= RESEND_TRIES) return false;
    kept.tries += 1;
    this.counters.resent += 1;
    setTimeout(() => { if (!this.finished) this.transmit(kept.frame); }, msg.body.retryAfter * 1000);
    return true;
  }

  // Send now when the socket is ready, else queue (bounded). Returns the frame id.
  send(type, call, body = {}) {
    const id = crypto.randomUUID();
    const frame = { v: 1, type, id, body };
    if (call) frame.call = call;
    if (this.finished) {
      this.dispatch("error", { type: "error", body: { code: "closed", message: "The connection is closed." } });
      return id;
    }
    this.sent.set(id, { frame, tries: 0 });
    if (this.sent.size > RESEND_KEPT) this.sent.delete(this.sent.keys().next().value);
    this.transmit(frame);
    return id;
  }

  transmit(frame) {
    if (this.ready && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
    } else if (this.queue.length >= QUEUE_LIMIT) {
      this.dispatch("error", {
        type: "error",
        body: { code: "queue_full", message: `The connection is away and ${QUEUE_LIMIT} messages wait already.` },
      });
    } else {
      this.queue.push(frame);
    }
  }

  flush() {
    while (this.queue.length && this.ready && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(this.queue.shift()));
    }
  }

  // Drop queued frames of a call (e.g. candidates of a peer connection that was replaced).
  dropQueued(predicate) {
    this.queue = this.queue.filter((f) => !predicate(f));
  }

  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close(1000);
  }
}
