// Incoming calls on any page: a banner with answer and decline, the ringtone (once the page has
// had a gesture), a flashing title and favicon, and a system notification when the user allowed
// them. The first answer on any device wins; the others are told "answered on another device".
// On a page that isn't a call (`mount`), the call screen is mounted hidden while it rings, and
// negotiates with the caller then (early ICE, call.js): answering shows it, with no page load.
import * as tones from "./tones.js";

const MISSED = new Set(["no_answer", "cancelled"]);

export function initRinger({ signal, root = document.getElementById("ringer"), exceptCall = null, mount = false }) {
  const state = (window.traverseRinger = { ringing: [], notices: [], tone: tones.toneState, mounted: null, ringAt: {} });
  if (!root) return state;
  const callUrl = (id) => root.dataset.callUrl.replace("00000000-0000-0000-0000-000000000000", id);
  const list = root.querySelector("ul");
  const calls = new Map(); // id -> {li, from, kind, notification}
  const title = document.title;
  const icon = document.querySelector("link[rel=icon]");
  const iconHref = icon ? icon.href : null;
  let flash = null;

  function refresh() {
    state.ringing = [...calls.keys()];
    root.hidden = list.children.length === 0;
    if (calls.size) {
      tones.play("ringtone");
      if (!flash) {
        let on = false;
        flash = setInterval(() => {
          on = !on;
          const first = calls.values().next().value;
          document.title = on && first ? `📞 ${first.from.name} is calling` : title;
        }, 1000);
        if (icon && root.dataset.ringIcon) icon.href = root.dataset.ringIcon;
      }
    } else {
      if (state.tone.wanted === "ringtone") tones.stop();
      clearInterval(flash);
      flash = null;
      document.title = title;
      if (icon && iconHref) icon.href = iconHref;
    }
  }

  function button(text, cls, action, fn) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.dataset.action = action;
    b.textContent = text;
    b.addEventListener("click", fn);
    return b;
  }

  function ring(id, from, kind) {
    if (calls.has(id) || id === exceptCall) return;
    const li = document.createElement("li");
    li.dataset.call = id;
    const who = document.createElement("strong");
    who.textContent = from.name;
    const handle = document.createElement("span");
    handle.className = "muted";
    // The username too: display names are free text, and anyone can call themselves "Alice".
    handle.textContent = ` @${from.username}`;
    const what = document.createElement("span");
    what.textContent = ` · ${kind === "voice" ? "voice" : "video"} call`;
    const actions = document.createElement("span");
    actions.className = "actions";
    const answer = (video) => () => answerCall(id, video);
    if (kind !== "voice") actions.append(button("Answer", "primary", "accept-video", answer(true)));
    actions.append(
      button(kind === "voice" ? "Answer" : "Answer without camera", kind === "voice" ? "primary" : "", "accept-audio", answer(false)),
      button("Decline", "danger", "decline", () => signal.send("decline", id)),
    );
    li.append(who, handle, what, actions);
    list.prepend(li);
    let notification = null;
    if ("Notification" in window && Notification.permission === "granted" && document.visibilityState !== "visible") {
      notification = new Notification(`${from.name} (@${from.username}) is calling`, { tag: id, requireInteraction: true });
      notification.onclick = () => { window.focus(); notification.close(); };
    }
    calls.set(id, { li, from, kind, notification });
    refresh();
    // When the banner is on screen (the frame that paints it): for the benchmark.
    requestAnimationFrame(() => { state.ringAt[id] = performance.timeOrigin + performance.now(); });
    if (mount && root.dataset.earlyIce === "1" && !screen) mountCall(id);
  }

  // --- the call screen, mounted while it rings ---------------------------------------------
  let screen = null; // {id, overlay, call, ready: Promise}

  function mountCall(id) {
    const overlay = document.createElement("div");
    overlay.className = "call-overlay";
    overlay.hidden = true;
    const current = (screen = { id, overlay, call: null });
    screen.ready = (async () => {
      const res = await fetch(`${callUrl(id)}?fragment=1`, { credentials: "same-origin" });
      if (!res.ok || screen !== current) throw new Error(`HTTP ${res.status}`);
      overlay.innerHTML = await res.text(); // our own template, rendered for this user
      const section = overlay.querySelector("#call");
      if (!section || section.dataset.ringing !== "1") throw new Error("not ringing here");
      document.body.append(overlay);
      const { init } = await import("./call.js");
      if (screen !== current) throw new Error("gone");
      current.call = init(section, { signal, onEnd: () => unmount(current) });
      state.mounted = { call: id, shown: false };
      return current.call;
    })().catch(() => { if (screen === current) unmount(current); return null; });
  }

  function unmount(which) {
    if (screen !== which) return;
    screen = null;
    if (!which.call || !which.call.shown) {
      which.overlay.remove();
      state.mounted = null;
    }
  }

  async function answerCall(id, video) {
    const mine = screen && screen.id === id ? screen : null;
    const call = mine ? await mine.ready : null;
    if (!call || call.ended) {
      location.href = `${callUrl(id)}?answer=1&video=${video ? 1 : 0}`;
      return;
    }
    call.accept(video);
    stopRinging(id, null);
    mine.overlay.hidden = false;
    document.body.classList.add("in-call");
    state.mounted = { call: id, shown: true };
    // The address is the call's (a reload lands on the call page, which takes the call over);
    // Back leaves the call, as it does from the call page.
    history.pushState({ call: id }, "", callUrl(id));
    window.addEventListener("popstate", () => location.reload(), { once: true });
  }

  function notice(id, text) {
    const li = document.createElement("li");
    li.className = "notice";
    li.dataset.notice = id;
    li.textContent = text;
    list.prepend(li);
    state.notices.push({ call: id, text });
    setTimeout(() => { li.remove(); refresh(); }, 6000);
  }

  function stopRinging(id, text) {
    const c = calls.get(id);
    if (!c) return;
    c.li.remove();
    if (c.notification) c.notification.close();
    calls.delete(id);
    if (text) notice(id, text);
    refresh();
  }

  signal
    .on("welcome", (msg) => {
      // After a reconnect that could not resume: ring what still rings, drop the rest.
      const now = new Set(msg.body.ringing.map((r) => r.call));
      for (const id of [...calls.keys()]) if (!now.has(id)) stopRinging(id, null);
      for (const r of msg.body.ringing) ring(r.call, r.from, r.kind);
    })
    .on("incoming", (msg) => ring(msg.call, msg.body.from, msg.body.kind))
    .on("answered", (msg) => stopRinging(msg.call, "Answered on another device."))
    .on("hangup", (msg) => {
      const c = calls.get(msg.call);
      if (!c) return;
      stopRinging(msg.call, MISSED.has(msg.body.reason) ? `Missed call from ${c.from.name}.` : null);
    });
  return state;
}
