// The call screen: ringing (ringback, accept/decline), local media with device pickers, perfect
// negotiation over the signaling socket, ICE restart when the path breaks, mute/camera state both
// ways, a timer, and a quality indicator from getStats() reported to the server every few seconds.
// All of the call's state lives in one object, `call` (window.traverseCall, the tests' hook).
import { Signal } from "./signal.js";
import { initRinger } from "./ringer.js";
import * as tones from "./tones.js";

const END_TEXT = {
  hangup: "Call ended",
  declined: "Declined",
  busy: "Busy",
  no_answer: "No answer",
  cancelled: "Cancelled",
  connection_lost: "Connection lost",
  failed: "Call failed: no network path",
  answered_elsewhere: "Answered on another device",
  taken_over: "The call moved to another of your devices",
};
const STATS_INTERVAL_MS = 5000;
const DISCONNECTED_GRACE_MS = 3000; // a "disconnected" path this long gets an ICE restart
const MAX_RESTARTS = 3; // the first on all paths, then relay-only; then the call has failed

// The grade of a sample: the same table as calls.models.quality_grade (docs/signaling.md).
export function grade(rttMs, lossPct) {
  const rtt = rttMs || 0;
  const loss = lossPct || 0;
  if (rtt < 150 && loss < 2) return "good";
  if (rtt < 400 && loss < 8) return "fair";
  return "poor";
}

function pairType(local, remote) {
  const types = [local.candidateType, remote.candidateType];
  for (const t of ["relay", "srflx", "prflx"]) if (types.includes(t)) return t;
  return "host";
}

export function init(root) {
  const $ = (id) => document.getElementById(id);
  const data = root.dataset;
  const ui = {
    status: $("call-status"), conn: $("conn-type"), quality: $("quality"), timer: $("timer"),
    error: $("call-error"), local: $("local"), remote: $("remote"), peerMuted: $("peer-muted"),
    peerCamera: $("peer-camera-off"), mute: $("mute"), camera: $("camera"), hangup: $("hangup"),
    accept: $("accept"), acceptAudio: $("accept-audio"), decline: $("decline"), takeOver: $("take-over"),
    mic: $("mic"), cam: $("cam"), ringing: $("ringing-actions"), controls: $("in-call-controls"),
  };
  const call = (window.traverseCall = {
    id: data.call,
    role: data.role,
    kind: data.kind,
    serverState: data.state,
    status: "starting",
    endReason: null,
    connectedAt: null,
    answeredAt: null,
    peerSession: null, // the device session of the other side: where offers and candidates go
    mediaFlowingAt: null,
    connections: 0,
    report: null,
    ice: null,
    errors: [],
    peerMedia: null,
    quality: null,
    iceRestarts: 0,
    recoveries: 0,
    lastRecoveryMs: null,
    signalingSessions: 0,
    signalingDrops: 0,
    statsSent: 0,
    heldBy: sessionStorage.getItem(`traverse.call.${data.call}`) || "",
    forceRelay: data.forceRelay === "1" || localStorage.getItem("traverse.forceRelay") === "1",
    signal: null,
    pc: null,
    localStream: null,
    polite: data.role === "callee",
    makingOffer: false,
    ignoreOffer: false,
    ended: false,
    rtcConfig: { iceServers: [] },
    restartTimer: null,
    brokenSince: null,
    lastSample: null,
  });

  function setStatus(text) {
    call.status = text;
    ui.status.textContent = text;
  }

  function showError(text) {
    call.errors.push(text);
    ui.error.hidden = false;
    ui.error.textContent = text;
  }

  function finish(reason, { redirect = true } = {}) {
    if (call.ended) return;
    call.ended = true;
    call.endReason = reason;
    tones.stop();
    setStatus(END_TEXT[reason] || "Call ended");
    root.classList.add("ended");
    clearTimeout(refreshTimer);
    clearInterval(timers.stats);
    clearInterval(timers.clock);
    clearTimeout(call.restartTimer);
    if (call.pc) { call.pc.close(); call.pc = null; }
    if (call.localStream) for (const t of call.localStream.getTracks()) t.stop();
    if (call.signal) call.signal.close();
    for (const b of [ui.hangup, ui.mute, ui.camera, ui.accept, ui.acceptAudio, ui.decline]) if (b) b.disabled = true;
    if (reason === "busy") { tones.play("busy"); setTimeout(() => tones.stop(), 3000); }
    if (redirect) setTimeout(() => { location.href = data.detailUrl; }, 3500);
  }

  if (data.state === "ended") { finish(data.endReason || "hangup"); return call; }

  const signal = (call.signal = new Signal(data.wsPath));
  initRinger({ signal, exceptCall: call.id });
  const timers = { stats: null, clock: null };

  // --- local media ----------------------------------------------------------------------
  const wantVideo = data.kind === "video" && !(call.role === "callee" && data.video === "0");
  async function openMedia() {
    try {
      call.localStream = await navigator.mediaDevices.getUserMedia({
        audio: true, video: wantVideo ? { width: 640, height: 360 } : false,
      });
    } catch (err) {
      try {
        call.localStream = await navigator.mediaDevices.getUserMedia({ audio: true });
        if (wantVideo) showError("No camera: audio only.");
      } catch {
        showError(`No microphone or camera (${err.name}): you can still see and hear the other side.`);
      }
    }
    if (call.localStream) ui.local.srcObject = call.localStream;
    ui.camera.hidden = !call.localStream || !call.localStream.getVideoTracks().length;
    await fillDevicePickers();
  }

  async function fillDevicePickers() {
    if (!navigator.mediaDevices.enumerateDevices) return;
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [select, kind] of [[ui.mic, "audioinput"], [ui.cam, "videoinput"]]) {
      const track = call.localStream && (kind === "audioinput" ? call.localStream.getAudioTracks()[0] : call.localStream.getVideoTracks()[0]);
      select.replaceChildren();
      for (const d of devices.filter((x) => x.kind === kind)) {
        const o = document.createElement("option");
        o.value = d.deviceId;
        o.textContent = d.label || (kind === "audioinput" ? "Microphone" : "Camera");
        if (track && track.getSettings().deviceId === d.deviceId) o.selected = true;
        select.append(o);
      }
      select.closest("label").hidden = select.options.length === 0 || !track;
    }
  }

  async function switchDevice(kind, deviceId) {
    const constraints = kind === "audio" ? { audio: { deviceId: { exact: deviceId } } } : { video: { deviceId: { exact: deviceId }, width: 640, height: 360 } };
    try {
      const fresh = await navigator.mediaDevices.getUserMedia(constraints);
      const track = fresh.getTracks()[0];
      const old = kind === "audio" ? call.localStream.getAudioTracks()[0] : call.localStream.getVideoTracks()[0];
      track.enabled = old ? old.enabled : true;
      if (call.pc) {
        const sender = call.pc.getSenders().find((s) => s.track && s.track.kind === kind);
        if (sender) await sender.replaceTrack(track);
      }
      if (old) { call.localStream.removeTrack(old); old.stop(); }
      call.localStream.addTrack(track);
    } catch (err) {
      showError(`Could not switch to that device: ${err.message}`);
    }
  }
  ui.mic.addEventListener("change", () => switchDevice("audio", ui.mic.value));
  ui.cam.addEventListener("change", () => switchDevice("video", ui.cam.value));

  function mediaState() {
    const s = call.localStream;
    return {
      audio: !!s && s.getAudioTracks().some((t) => t.enabled),
      video: !!s && s.getVideoTracks().some((t) => t.enabled),
      screen: false,
    };
  }
  function sendMediaState() {
    if (call.joined) signal.send("media-state", call.id, mediaState());
  }
  function showPeerMedia(media) {
    call.peerMedia = media;
    ui.peerMuted.hidden = media.audio;
    ui.peerCamera.hidden = media.video || call.kind === "voice";
  }

  // --- the peer connection --------------------------------------------------------------
  function pcAlive() {
    return !!call.pc && ["new", "connecting", "connected", "disconnected"].includes(call.pc.connectionState);
  }

  function startPeerConnection() {
    if (call.pc) call.pc.close();
    const pc = (call.pc = new RTCPeerConnection(call.rtcConfig));
    let counted = false;
    call.makingOffer = false;
    call.ignoreOffer = false;
    if (call.localStream) for (const track of call.localStream.getTracks()) pc.addTrack(track, call.localStream);
    if (!call.localStream || !call.localStream.getAudioTracks().length) pc.addTransceiver("audio", { direction: "recvonly" });
    if (call.kind === "video" && (!call.localStream || !call.localStream.getVideoTracks().length)) pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = ({ streams }) => { ui.remote.srcObject = streams[0]; watchFirstFrame(); };
    pc.onicecandidate = ({ candidate }) => signal.send("candidate", call.id, { to: call.peerSession, candidate: candidate ? candidate.toJSON() : null });
    pc.onnegotiationneeded = async () => {
      try {
        call.makingOffer = true;
        await pc.setLocalDescription();
        signal.send(pc.localDescription.type, call.id, { to: call.peerSession, description: pc.localDescription.toJSON() });
      } catch (err) {
        showError(`Negotiation failed: ${err.message}`);
      } finally {
        call.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (call.pc !== pc || call.ended) return;
      const s = pc.connectionState;
      if (s === "connected") {
        clearTimeout(call.restartTimer);
        if (call.brokenSince) {
          call.lastRecoveryMs = Date.now() - call.brokenSince;
          call.recoveries += 1;
          call.brokenSince = null;
        }
        call.restartsInARow = 0;
        if (!call.connectedAt) { call.connectedAt = Date.now(); startClock(); }
        // Peer connections that got connected: a call that never renegotiates keeps this at 1.
        if (!counted) { counted = true; call.connections += 1; }
        setStatus("connected");
        reportConnection();
        startStats();
      } else if (s === "disconnected") {
        call.brokenSince = call.brokenSince || Date.now();
        setStatus("reconnecting media");
        clearTimeout(call.restartTimer);
        call.restartTimer = setTimeout(() => { if (call.pc === pc && pc.connectionState === "disconnected") restartIce(); }, DISCONNECTED_GRACE_MS);
      } else if (s === "failed") {
        call.brokenSince = call.brokenSince || Date.now();
        restartIce();
      } else {
        setStatus(s);
      }
    };
  }

  // The path broke (a relay died, the network changed): restart ICE on the same connection,
  // first on every path, then relay-only, with fresh credentials; after that the call failed.
  async function restartIce() {
    const pc = call.pc;
    if (!pc || call.ended) return;
    call.restartsInARow = (call.restartsInARow || 0) + 1;
    if (call.restartsInARow > MAX_RESTARTS) {
      signal.send("hangup", call.id, { reason: "failed" });
      finish("failed");
      return;
    }
    call.iceRestarts += 1;
    setStatus("reconnecting media");
    await refreshIce().catch(() => {});
    if (call.pc !== pc) return;
    const relayOnly = call.forceRelay || call.restartsInARow >= 2;
    pc.setConfiguration({ ...call.rtcConfig, iceTransportPolicy: relayOnly ? "relay" : "all" });
    pc.restartIce();
    clearTimeout(call.restartTimer);
    // A restart that doesn't get connected within 10 s is followed by the next one.
    call.restartTimer = setTimeout(() => { if (call.pc === pc && pc.connectionState !== "connected") restartIce(); }, 10000);
  }

  async function onDescription(description) {
    if (!call.pc) startPeerConnection();
    const pc = call.pc;
    const collision = description.type === "offer" && (call.makingOffer || pc.signalingState !== "stable");
    call.ignoreOffer = !call.polite && collision;
    if (call.ignoreOffer) return;
    await pc.setRemoteDescription(description);
    if (description.type === "offer") {
      await pc.setLocalDescription();
      signal.send("answer", call.id, { to: call.peerSession, description: pc.localDescription.toJSON() });
    }
  }

  async function onCandidate(candidate) {
    if (!call.pc) return;
    try {
      await call.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!call.ignoreOffer) showError(`Bad candidate: ${err.message}`);
    }
  }

  // --- stats: the path, quality, first frame ----------------------------------------------
  async function selectedPair() {
    if (!call.pc) return null;
    const stats = await call.pc.getStats();
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
      stats,
    };
  }
  call.selectedPair = async () => {
    const sel = await selectedPair();
    if (!sel) return null;
    const { stats: _stats, ...rest } = sel;
    return rest;
  };
  // Bytes of media received so far (all inbound RTP streams): it keeps growing while media flows.
  call.inboundBytes = async () => {
    if (!call.pc) return 0;
    let total = 0;
    (await call.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") total += s.bytesReceived || 0; });
    return total;
  };

  // The relay's name for a TURN URL: iceServers[i] and relays[i] describe the same relay.
  function relayName(url) {
    if (!call.ice) return url;
    const i = call.ice.iceServers.findIndex((s) => [].concat(s.urls).includes(url));
    return i >= 0 && call.ice.relays[i] ? call.ice.relays[i].name : url;
  }

  function showPath(sel) {
    ui.conn.textContent = sel.connectionType === "relay" ? `relayed via ${relayName(sel.relayUrl)}` : `direct (${sel.connectionType})`;
    ui.conn.classList.remove("muted");
  }

  // Right at "connected" getStats() may not name the selected pair yet: try again shortly.
  async function reportConnection(tries = 20) {
    const sel = await selectedPair();
    if (!sel) {
      if (tries > 0 && call.pc && !call.ended) setTimeout(() => reportConnection(tries - 1), 250);
      return;
    }
    call.report = { connectionType: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs, localType: sel.localType };
    showPath(sel);
    signal.send("report", call.id, { connectionType: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs });
  }

  async function sample() {
    const sel = await selectedPair();
    if (!sel) return;
    let lost = 0, received = 0, bytes = 0;
    sel.stats.forEach((s) => {
      if (s.type === "inbound-rtp") { lost += s.packetsLost || 0; received += s.packetsReceived || 0; bytes += s.bytesReceived || 0; }
    });
    const now = performance.now();
    const prev = call.lastSample;
    call.lastSample = { lost, received, bytes, at: now };
    if (!prev) return;
    const dLost = Math.max(0, lost - prev.lost), dRecv = Math.max(0, received - prev.received);
    const lossPct = dLost + dRecv ? Math.round((1000 * dLost) / (dLost + dRecv)) / 10 : 0;
    const bitrateKbps = Math.round(((bytes - prev.bytes) * 8) / (now - prev.at));
    const q = grade(sel.rttMs, lossPct);
    call.quality = { grade: q, rttMs: sel.rttMs, lossPct, bitrateKbps, path: sel.connectionType };
    ui.quality.textContent = `${q}${sel.rttMs != null ? ` · ${Math.round(sel.rttMs)} ms` : ""}${lossPct ? ` · ${lossPct}% loss` : ""}`;
    ui.quality.className = `pill quality-${q}`;
    showPath(sel);
    signal.send("stats", call.id, { path: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs, lossPct, bitrateKbps });
    call.statsSent += 1;
  }

  function startStats() {
    if (timers.stats) return;
    sample();
    timers.stats = setInterval(() => { if (call.pc && call.pc.connectionState === "connected") sample().catch(() => {}); }, STATS_INTERVAL_MS);
  }

  function startClock() {
    const tick = () => {
      const s = Math.floor((Date.now() - call.connectedAt) / 1000);
      ui.timer.textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
    };
    tick();
    timers.clock = setInterval(tick, 1000);
  }

  // mediaFlowingAt: when the first remote frame was decoded (video) or heard (voice).
  function watchFirstFrame() {
    if (call.mediaFlowingAt || call.watchingFrames) return;
    call.watchingFrames = true;
    const poll = setInterval(async () => {
      if (!call.pc || call.mediaFlowingAt) { clearInterval(poll); return; }
      (await call.pc.getStats()).forEach((s) => {
        if (s.type !== "inbound-rtp" || call.mediaFlowingAt) return;
        if ((s.kind === "video" && s.framesDecoded > 0) || (call.kind === "voice" && s.kind === "audio" && s.totalSamplesReceived > 0)) {
          call.mediaFlowingAt = Date.now();
        }
      });
    }, 100);
  }

  // TURN credentials expire (ttl); long calls fetch fresh ones before they do, so an ICE restart
  // or a new relay candidate late in the call still authenticates.
  let refreshTimer = null;
  async function refreshIce() {
    const res = await fetch(data.iceUrl, { credentials: "same-origin" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const fresh = await res.json();
    call.ice = fresh;
    call.rtcConfig = { ...call.rtcConfig, iceServers: fresh.iceServers };
    if (call.pc) call.pc.setConfiguration(call.rtcConfig);
    scheduleIceRefresh(fresh);
  }
  function scheduleIceRefresh(ice) {
    clearTimeout(refreshTimer);
    const wait = Math.max(30_000, Date.parse(ice.refreshAt) - Date.now());
    refreshTimer = setTimeout(() => refreshIce().catch((err) => showError(`Could not refresh relay credentials: ${err.message}`)), wait);
  }

  // --- the call's signaling ---------------------------------------------------------------
  function enter() {
    if (call.role === "callee" && call.serverState === "ringing" && !call.joined) {
      if (data.answer === "1") { signal.send("accept", call.id, { video: wantVideo }); call.answeredAt = Date.now(); return; }
      ui.ringing.hidden = false; // answer from this page
      ui.controls.hidden = true;
      setStatus("ringing");
      tones.play("ringtone");
      return;
    }
    // After a signaling drop that could not resume, the page says whether it still holds its
    // peer connection: the server then treats this as a resume, and nobody renegotiates.
    signal.send("join", call.id, { resume: pcAlive(), replaces: call.heldBy });
  }

  function onJoined(msg) {
    call.joined = true;
    call.polite = msg.body.polite;
    call.serverState = msg.body.state;
    call.heldBy = signal.session;
    sessionStorage.setItem(`traverse.call.${call.id}`, signal.session);
    ui.ringing.hidden = true;
    ui.controls.hidden = false;
    ui.takeOver.hidden = true;
    if (msg.body.peers.length) { call.peerSession = msg.body.peers[0].session; showPeerMedia(msg.body.peers[0].media); }
    sendMediaState();
    if (msg.body.resumed && pcAlive()) {
      setStatus(call.pc.connectionState === "connected" ? "connected" : call.pc.connectionState);
      return;
    }
    if (msg.body.peers.length) {
      tones.stop();
      setStatus("connecting");
      startPeerConnection();
    } else {
      setStatus("ringing");
      if (call.role === "caller" && msg.body.state === "ringing") { tones.play("ringback"); ui.hangup.textContent = "Cancel"; }
    }
  }

  signal
    .on("welcome", (msg) => {
      call.signalingSessions += 1;
      call.ice = msg.body.ice;
      call.rtcConfig = { iceServers: msg.body.ice.iceServers, iceTransportPolicy: call.forceRelay ? "relay" : "all" };
      scheduleIceRefresh(msg.body.ice);
      if (msg.body.ice.status !== "ok") ui.conn.textContent = "no relay available: direct only";
      if (pcAlive()) call.pc.setConfiguration(call.rtcConfig);
      enter();
    })
    .on("resumed", () => { call.signalingSessions += 1; })
    .on("close", () => { call.signalingDrops += 1; })
    .on("finished", (msg) => { if (!call.ended && msg.code === 4401) finish("hangup"); })
    .on("joined", onJoined)
    .on("state", (msg) => {
      call.serverState = msg.body.state;
      if (msg.body.state === "connecting") { tones.stop(); ui.hangup.textContent = "Hang up"; }
    })
    .on("peer-joined", (msg) => {
      call.peerSession = msg.body.session;
      if (!call.answeredAt) call.answeredAt = Date.now();
      tones.stop();
      ui.hangup.textContent = "Hang up";
      if (msg.body.resumed && pcAlive()) {
        setStatus(call.pc.connectionState === "connected" ? "connected" : call.pc.connectionState);
        return;
      }
      setStatus("connecting");
      startPeerConnection();
      sendMediaState();
    })
    .on("peer-reconnecting", (msg) => {
      // Media may well still flow: keep the peer connection, and wait for the peer's socket.
      setStatus(`the other side's signaling dropped; waiting up to ${msg.body.graceSeconds} s`);
    })
    .on("peer-left", () => {
      setStatus("the other side left; waiting for them to come back");
      if (call.pc) { call.pc.close(); call.pc = null; }
    })
    .on("media-state", (msg) => showPeerMedia(msg.body))
    .on("offer", (msg) => onDescription(msg.body.description).catch((e) => showError(e.message)))
    .on("answer", (msg) => onDescription(msg.body.description).catch((e) => showError(e.message)))
    .on("candidate", (msg) => onCandidate(msg.body.candidate))
    .on("hangup", (msg) => { if (msg.call === call.id) finish(msg.body.reason); })
    .on("answered", (msg) => { if (msg.call === call.id) finish("answered_elsewhere"); })
    .on("taken-over", (msg) => { if (msg.call === call.id) finish("taken_over"); })
    .on("error", (msg) => {
      const code = msg.body.code;
      if (msg.call && msg.call !== call.id) return;
      if (code === "call_ended" || code === "not_ringing") finish("hangup");
      else if (code === "answered_elsewhere") finish("answered_elsewhere");
      else if (code === "in_call_elsewhere") {
        setStatus("on another device");
        ui.takeOver.hidden = false;
      } else if (code !== "peer_not_present") showError(`${code}: ${msg.body.message}`);
    });

  // --- controls -----------------------------------------------------------------------------
  ui.hangup.addEventListener("click", () => {
    const ringingCaller = call.role === "caller" && call.serverState === "ringing";
    signal.send(ringingCaller ? "cancel" : "hangup", call.id);
  });
  ui.accept.addEventListener("click", () => { call.answeredAt = Date.now(); tones.stop(); signal.send("accept", call.id, { video: wantVideo }); });
  ui.acceptAudio.addEventListener("click", () => {
    call.answeredAt = Date.now();
    tones.stop();
    if (call.localStream) for (const t of call.localStream.getVideoTracks()) t.enabled = false;
    signal.send("accept", call.id, { video: false });
  });
  ui.decline.addEventListener("click", () => signal.send("decline", call.id));
  ui.takeOver.addEventListener("click", () => signal.send("take-over", call.id));
  ui.mute.addEventListener("click", () => {
    if (!call.localStream) return;
    const tracks = call.localStream.getAudioTracks();
    const muted = tracks.some((t) => t.enabled);
    tracks.forEach((t) => { t.enabled = !muted; });
    ui.mute.textContent = muted ? "Unmute" : "Mute";
    ui.mute.classList.toggle("active", muted);
    sendMediaState();
  });
  ui.camera.addEventListener("click", () => {
    if (!call.localStream) return;
    const tracks = call.localStream.getVideoTracks();
    const off = tracks.some((t) => t.enabled);
    tracks.forEach((t) => { t.enabled = !off; });
    ui.camera.textContent = off ? "Camera on" : "Camera off";
    ui.camera.classList.toggle("active", off);
    sendMediaState();
  });

  openMedia().finally(() => signal.connect());
  return call;
}

const root = document.getElementById("call");
if (root) init(root);
