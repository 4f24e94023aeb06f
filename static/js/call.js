// The in-call page: local media, perfect negotiation over the signaling socket, ICE servers
// from the platform's assignment, and a report of the selected candidate pair once connected.
import { Signal } from "./signal.js";

const root = document.getElementById("call");
const callId = root.dataset.call;
const forceRelay = root.dataset.forceRelay === "1" || localStorage.getItem("traverse.forceRelay") === "1";
const statusEl = document.getElementById("call-status");
const connEl = document.getElementById("conn-type");
const errorEl = document.getElementById("call-error");
const localVideo = document.getElementById("local");
const remoteVideo = document.getElementById("remote");

// Exposed for people debugging a call from the console, and for the browser tests.
const state = (window.traverseCall = {
  status: "starting", connectedAt: null, connections: 0, report: null, ice: null, errors: [],
});

function setStatus(text) {
  state.status = text;
  statusEl.textContent = text;
}

function showError(text) {
  state.errors.push(text);
  errorEl.hidden = false;
  errorEl.textContent = text;
}

let localStream = null;
try {
  localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
} catch (err) {
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true });
    showError("No camera: audio only.");
  } catch {
    showError(`No microphone or camera (${err.name}): you can still see and hear the other side.`);
  }
}
if (localStream) localVideo.srcObject = localStream;

const signal = new Signal();
let pc = null;
let polite = root.dataset.role === "callee";
let makingOffer = false;
let ignoreOffer = false;
let ended = false;
let rtcConfig = { iceServers: [] };

// A peer connection worth keeping when the signaling socket comes back: media may still flow on it.
function pcAlive() {
  return !!pc && ["new", "connecting", "connected", "disconnected"].includes(pc.connectionState);
}

function startPeerConnection() {
  if (pc) pc.close();
  pc = new RTCPeerConnection(rtcConfig);
  let counted = false;
  makingOffer = false;
  ignoreOffer = false;
  if (localStream) for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
  else {
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
  }
  pc.ontrack = ({ streams }) => { remoteVideo.srcObject = streams[0]; };
  pc.onicecandidate = ({ candidate }) => signal.send("candidate", callId, { candidate: candidate ? candidate.toJSON() : null });
  pc.onnegotiationneeded = async () => {
    try {
      makingOffer = true;
      await pc.setLocalDescription();
      signal.send(pc.localDescription.type, callId, { description: pc.localDescription.toJSON() });
    } catch (err) {
      showError(`Negotiation failed: ${err.message}`);
    } finally {
      makingOffer = false;
    }
  };
  pc.onconnectionstatechange = () => {
    if (!pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      if (!state.connectedAt) state.connectedAt = Date.now();
      // Peer connections that got connected: a call that never renegotiates keeps this at 1.
      if (!counted) { counted = true; state.connections += 1; }
      setStatus("connected");
      reportConnection();
    } else if (s === "failed" && signal.ws && signal.ws.readyState === WebSocket.OPEN) {
      // The path broke (a network change, an expired relay allocation): ICE restart on the same
      // connection, negotiated over signaling, before giving up.
      state.iceRestarts = (state.iceRestarts || 0) + 1;
      if (state.iceRestarts <= 2) { setStatus("reconnecting media"); pc.restartIce(); return; }
      setStatus("failed");
      showError("The connection failed. No relay could carry the call.");
    } else if (s === "failed") {
      setStatus("failed");
      showError("The connection failed. No relay could carry the call.");
    } else if (!ended) {
      setStatus(s);
    }
  };
}

async function onDescription(description) {
  if (!pc) startPeerConnection();
  const collision = description.type === "offer" && (makingOffer || pc.signalingState !== "stable");
  ignoreOffer = !polite && collision;
  if (ignoreOffer) return;
  await pc.setRemoteDescription(description);
  if (description.type === "offer") {
    await pc.setLocalDescription();
    signal.send("answer", callId, { description: pc.localDescription.toJSON() });
  }
}

async function onCandidate(candidate) {
  if (!pc) return;
  try {
    await pc.addIceCandidate(candidate);
  } catch (err) {
    if (!ignoreOffer) showError(`Bad candidate: ${err.message}`);
  }
}

function pairType(local, remote) {
  const types = [local.candidateType, remote.candidateType];
  for (const t of ["relay", "srflx", "prflx"]) if (types.includes(t)) return t;
  return "host";
}

async function selectedPair() {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    connectionType: pairType(local, remote),
    localType: local.candidateType,
    remoteType: remote.candidateType,
    relayUrl: local.candidateType === "relay" ? local.url || "" : "",
    relayProtocol: local.relayProtocol || null,
    rttMs: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 10000) / 10 : null,
  };
}
state.selectedPair = () => (pc ? selectedPair() : null);
// Bytes of media received so far (all inbound RTP streams): it keeps growing while media flows.
state.inboundBytes = async () => {
  if (!pc) return 0;
  let total = 0;
  (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") total += s.bytesReceived || 0; });
  return total;
};

async function reportConnection() {
  const sel = await selectedPair();
  if (!sel) return;
  state.report = sel;
  connEl.textContent = sel.connectionType === "relay" ? "relayed" : `direct (${sel.connectionType})`;
  connEl.classList.remove("muted");
  signal.send("report", callId, { connectionType: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs });
}

function endCall(text) {
  if (ended) return;
  ended = true;
  setStatus(text);
  clearTimeout(refreshTimer);
  if (pc) { pc.close(); pc = null; }
  if (localStream) for (const t of localStream.getTracks()) t.stop();
  signal.close();
  document.getElementById("hangup").disabled = true;
  setTimeout(() => { location.href = root.dataset.detailUrl; }, 1500);
}

// TURN credentials expire (ttl); long calls fetch fresh ones before they do, so an ICE restart
// or a new relay candidate late in the call still authenticates.
let refreshTimer = null;
function scheduleIceRefresh(ice) {
  clearTimeout(refreshTimer);
  const wait = Math.max(30_000, Date.parse(ice.refreshAt) - Date.now());
  refreshTimer = setTimeout(async () => {
    try {
      const res = await fetch("/api/v1/ice-servers/", { credentials: "same-origin" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const fresh = await res.json();
      state.ice = fresh;
      rtcConfig = { ...rtcConfig, iceServers: fresh.iceServers };
      if (pc) pc.setConfiguration(rtcConfig);
      scheduleIceRefresh(fresh);
    } catch (err) {
      showError(`Could not refresh relay credentials: ${err.message}`);
    }
  }, wait);
}

signal
  .on("welcome", (msg) => {
    state.ice = msg.body.ice;
    rtcConfig = { iceServers: msg.body.ice.iceServers, iceTransportPolicy: forceRelay ? "relay" : "all" };
    scheduleIceRefresh(msg.body.ice);
    if (msg.body.ice.status !== "ok") connEl.textContent = "no relay available: direct only";
    // After a signaling drop, the page says it still holds its peer connection: the server then
    // treats this as a resume, and neither side renegotiates.
    const resume = pcAlive();
    if (resume) pc.setConfiguration(rtcConfig);
    state.signalingSessions = (state.signalingSessions || 0) + 1;
    signal.send("join", callId, { resume });
  })
  .on("joined", (msg) => {
    polite = msg.body.polite;
    if (msg.body.resumed && pcAlive()) {
      setStatus(pc.connectionState === "connected" ? "connected" : pc.connectionState);
      return;
    }
    setStatus(msg.body.peers.length ? "connecting" : "ringing");
    if (msg.body.peers.length) startPeerConnection();
  })
  .on("peer-joined", (msg) => {
    if (msg.body.resumed && pcAlive()) {
      setStatus(pc.connectionState === "connected" ? "connected" : pc.connectionState);
      return;
    }
    setStatus("connecting");
    startPeerConnection();
  })
  .on("peer-reconnecting", (msg) => {
    // Media may well still flow: keep the peer connection, and wait for the peer's socket.
    setStatus(`the other side's signaling dropped; waiting up to ${msg.body.graceSeconds} s`);
  })
  .on("close", () => { state.signalingDrops = (state.signalingDrops || 0) + 1; })
  .on("peer-left", () => {
    setStatus("the other side left; waiting for them to come back");
    if (pc) { pc.close(); pc = null; }
  })
  .on("offer", (msg) => onDescription(msg.body.description).catch((e) => showError(e.message)))
  .on("answer", (msg) => onDescription(msg.body.description).catch((e) => showError(e.message)))
  .on("candidate", (msg) => onCandidate(msg.body.candidate))
  .on("hangup", () => endCall("call ended"))
  .on("error", (msg) => {
    if (msg.body.code === "call_ended") endCall("call ended");
    else if (msg.body.code !== "peer_not_present") showError(`${msg.body.code}: ${msg.body.message}`);
  });

document.getElementById("hangup").addEventListener("click", () => {
  signal.send("hangup", callId);
});
document.getElementById("mute").addEventListener("click", (ev) => {
  if (!localStream) return;
  const tracks = localStream.getAudioTracks();
  const muted = tracks.some((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = !muted; });
  ev.target.textContent = muted ? "Unmute" : "Mute";
  ev.target.classList.toggle("active", muted);
});
document.getElementById("camera").addEventListener("click", (ev) => {
  if (!localStream) return;
  const tracks = localStream.getVideoTracks();
  const off = tracks.some((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = !off; });
  ev.target.textContent = off ? "Camera on" : "Camera off";
  ev.target.classList.toggle("active", off);
});

signal.connect();
