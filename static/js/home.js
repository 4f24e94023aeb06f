// Home page: show incoming calls live over the signaling socket.
import { Signal } from "./signal.js";

const list = document.getElementById("incoming");
const empty = document.getElementById("no-incoming");
const status = document.getElementById("conn-status");

function refreshEmpty() {
  empty.hidden = list.children.length > 0;
}

function removeCall(id) {
  const li = list.querySelector(`li[data-call="${id}"]`);
  if (li) li.remove();
  refreshEmpty();
}

// A per-browser privacy preference that the call page reads (iceTransportPolicy "relay").
const forceRelay = document.getElementById("force-relay");
forceRelay.checked = localStorage.getItem("traverse.forceRelay") === "1";
forceRelay.addEventListener("change", () => localStorage.setItem("traverse.forceRelay", forceRelay.checked ? "1" : "0"));

// Exposed for the browser tests and for people debugging from the console.
const state = (window.traverseHome = { welcomes: 0, drops: 0 });

const signal = new Signal("/ws/signal/?ice=0");
signal
  .on("welcome", () => { state.welcomes += 1; status.textContent = "Online: incoming calls show up here."; })
  .on("close", () => { state.drops += 1; status.textContent = "Offline: reconnecting…"; })
  .on("incoming", (msg) => {
    if (list.querySelector(`li[data-call="${msg.call}"]`)) return;
    const li = document.createElement("li");
    li.dataset.call = msg.call;
    const who = document.createElement("strong");
    who.textContent = msg.body.from.name;
    // The username too: display names are free text, and anyone can call themselves "Alice".
    const handle = document.createElement("span");
    handle.className = "muted";
    handle.textContent = ` @${msg.body.from.username}`;
    const join = document.createElement("a");
    join.className = "button primary";
    join.href = `/calls/${msg.call}/`;
    join.textContent = "Join";
    li.append(who, handle, " is calling ", join);
    list.prepend(li);
    refreshEmpty();
  })
  .on("answered", (msg) => removeCall(msg.call))
  .on("hangup", (msg) => removeCall(msg.call));
signal.connect();
