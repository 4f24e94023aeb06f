// Incoming calls on any page: a banner with answer and decline, the ringtone (once the page has
// had a gesture), a flashing title and favicon, and a system notification when the user allowed
// them. The first answer on any device wins; the others are told "answered on another device".
import * as tones from "./tones.js";

const MISSED = new Set(["no_answer", "cancelled"]);

export function initRinger({ signal, root = document.getElementById("ringer"), exceptCall = null }) {
  const state = (window.traverseRinger = { ringing: [], notices: [], tone: tones.toneState });
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
    const answer = (video) => () => { location.href = `${callUrl(id)}?answer=1&video=${video ? 1 : 0}`; };
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
