// The network test (/network-test/): what calls from this network can do. The browser gathers
// the facts; the server decides the verdict (relays/nettest.py) and keeps the result.
import { init as initPage } from "./page.js";

const GATHER_MS = 6000; // a relay that gives no candidate by then counts as failed
const LOOPBACK_MS = 8000;

const $ = (id) => document.getElementById(id);

// ICE candidates gathered with `config`; with `firstRelay`, it stops at the first relay one.
async function gather(config, { firstRelay = false } = {}) {
  const pc = new RTCPeerConnection(config);
  pc.createDataChannel("probe");
  const found = [];
  const t0 = performance.now();
  const done = new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_MS);
    pc.onicecandidate = (e) => {
      if (!e.candidate) { clearTimeout(timer); resolve(); return; }
      found.push({ c: e.candidate, ms: performance.now() - t0 });
      if (firstRelay && e.candidate.type === "relay") { clearTimeout(timer); resolve(); }
    };
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  pc.close();
  return found;
}

// Step 1: server-reflexive addresses from the STUN servers, on one socket.
async function stunStep(stunUrls) {
  const found = await gather({ iceServers: stunUrls.map((u) => ({ urls: u })) });
  const mappings = [];
  const hostAddresses = [];
  for (const { c } of found) {
    if (c.protocol !== "udp") continue;
    if (c.type === "host" && c.address && !c.address.endsWith(".local")) hostAddresses.push(c.address);
    if (c.type === "srflx") {
      const base = c.relatedAddress && c.relatedAddress !== "0.0.0.0" ? `${c.relatedAddress}:${c.relatedPort}` : "";
      mappings.push({ server: c.url || "", address: c.address, port: c.port, base });
    }
  }
  return { mappings, hostAddresses: [...new Set(hostAddresses)] };
}

// Step 2: every TURN URL on its own (relay only): whether it allocates, and how long it takes.
async function relayStep(ice) {
  const checks = [];
  for (const server of ice.iceServers || []) {
    for (const url of [].concat(server.urls)) {
      if (!/^turns?:/.test(url)) continue;
      checks.push((async () => {
        const found = await gather(
          { iceServers: [{ urls: url, username: server.username, credential: server.credential }], iceTransportPolicy: "relay" },
          { firstRelay: true },
        );
        const relay = found.find((f) => f.c.type === "relay");
        return { url, ok: !!relay, ms: relay ? Math.round(relay.ms * 10) / 10 : null };
      })());
    }
  }
  return Promise.all(checks);
}

// Step 3: two connections in this page, both relay only, carry a message out through the
// relays and back in over this network.
async function loopbackStep(ice) {
  const config = { iceServers: ice.iceServers || [], iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate).catch(() => {});
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate).catch(() => {});
  b.ondatachannel = (e) => { e.channel.onmessage = (m) => e.channel.send(m.data); };
  const channel = a.createDataChannel("loopback");
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, ms: null }), LOOPBACK_MS);
      channel.onopen = () => channel.send(String(performance.now()));
      channel.onmessage = (m) => {
        clearTimeout(timer);
        resolve({ ok: true, ms: Math.round((performance.now() - Number(m.data)) * 10) / 10 });
      };
      (async () => {
        await a.setLocalDescription(await a.createOffer());
        await b.setRemoteDescription(a.localDescription);
        await b.setLocalDescription(await b.createAnswer());
        await a.setRemoteDescription(b.localDescription);
      })().catch(() => {});
    });
  } finally {
    a.close();
    b.close();
  }
}

function mark(step, text, state) {
  const li = document.querySelector(`#nettest-steps [data-step=${step}]`);
  li.dataset.state = state;
  if (text) li.dataset.result = text;
  li.querySelector(".result")?.remove();
  if (text) {
    const span = document.createElement("span");
    span.className = "result muted";
    span.textContent = ` — ${text}`;
    li.append(span);
  }
}

function showDetails(result) {
  const body = $("nettest-details").querySelector("tbody");
  body.replaceChildren();
  const row = (label, value) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = label;
    td.textContent = value;
    tr.append(th, td);
    body.append(tr);
  };
  const d = result.details || {};
  row("NAT", result.networkType);
  row("UDP", result.udp ? "gets out" : "blocked");
  for (const m of d.mappings || []) row(`Seen by ${m.server || "STUN"}`, `${m.address}:${m.port}`);
  for (const r of d.relays || []) row(r.url, r.ok ? `allocated in ${r.ms} ms` : "no answer");
  if (d.loopback) row("Through a relay and back", d.loopback.ok ? `${d.loopback.ms} ms` : "failed");
  row("Network", result.network || "–");
  $("nettest-details").hidden = false;
}

export async function run() {
  const plan = JSON.parse($("nettest-plan").textContent);
  const state = (window.traverseNetworkTest = { running: true, result: null, error: null });
  $("nettest-error").hidden = true;
  $("nettest-verdict").textContent = "Testing…";
  try {
    // The microphone, as a call would ask for it: with it granted the browser shows its own
    // addresses (not mDNS names), which tells a network with no NAT apart.
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      stream.getTracks().forEach((t) => t.stop());
    } catch {
      // Refused or no microphone: the test goes on, and may not tell "open" from a NAT.
    }
    mark("stun", "", "running");
    const stun = await stunStep(plan.stunUrls);
    mark("stun", stun.mappings.length ? `${stun.mappings.length} address(es) seen` : "no answer", "done");

    mark("relays", "", "running");
    const res = await fetch(plan.iceUrl, { credentials: "same-origin" });
    const ice = res.ok ? await res.json() : { iceServers: [] };
    const relays = await relayStep(ice);
    mark("relays", `${relays.filter((r) => r.ok).length} of ${relays.length} allocated`, "done");

    mark("loopback", "", "running");
    const loopback = relays.some((r) => r.ok) ? await loopbackStep(ice) : { ok: false, ms: null };
    mark("loopback", loopback.ok ? `${loopback.ms} ms` : "failed", "done");

    const csrf = document.querySelector("#nettest input[name=csrfmiddlewaretoken]").value;
    const posted = await fetch(plan.postUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify({
        mappings: stun.mappings,
        hostAddresses: stun.hostAddresses,
        stunServers: plan.stunUrls.length,
        relays,
        loopback,
      }),
    });
    const body = await posted.json();
    if (!posted.ok) throw new Error((body.error && body.error.message) || `HTTP ${posted.status}`);
    state.result = body;
    $("nettest-verdict").textContent = body.sentence;
    showDetails(body);
  } catch (err) {
    state.error = String(err.message || err);
    $("nettest-verdict").textContent = "";
    $("nettest-error").textContent = `The test could not finish: ${state.error}`;
    $("nettest-error").hidden = false;
  } finally {
    state.running = false;
  }
}

export function init() {
  initPage();
  $("nettest-start").addEventListener("click", () => run());
}

init();
