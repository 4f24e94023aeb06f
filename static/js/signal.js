// The signaling client: one WebSocket per page, the envelope of docs/signaling.md, and
// reconnection with back-off. Listeners get the whole envelope.
export class Signal {
  constructor(path = "/ws/signal/") {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.url = `${scheme}://${location.host}${path}`;
    this.handlers = new Map();
    this.retry = 0;
    this.closedByUs = false;
    this.welcome = null;
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
    return this;
  }

  dispatch(type, msg) {
    for (const fn of this.handlers.get(type) || []) fn(msg);
    for (const fn of this.handlers.get("*") || []) fn(msg);
  }

  connect() {
    return new Promise((resolve) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let welcomed = false;
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (msg.type === "welcome") {
          this.retry = 0;
          this.welcome = msg;
          if (!welcomed) { welcomed = true; resolve(msg); }
        }
        this.dispatch(msg.type, msg);
      };
      ws.onclose = (ev) => {
        this.dispatch("close", { code: ev.code });
        if (this.closedByUs || ev.code === 4401 || ev.code === 4403) return; // signed out, disabled
        const delay = Math.min(10000, 500 * 2 ** this.retry++);
        setTimeout(() => this.connect().then((m) => this.dispatch("reconnected", m)), delay);
      };
    });
  }

  send(type, call, body = {}) {
    const id = crypto.randomUUID();
    const frame = { v: 1, type, id, body };
    if (call) frame.call = call;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
    return id;
  }

  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close();
  }
}
