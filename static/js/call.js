// The call screen: ringing (ringback, accept/decline), local media with device pickers, one peer
// connection per other device in the call (a mesh, up to CALL_MAX_PARTICIPANTS), each with
// perfect negotiation over the signaling socket (messages addressed `to` its device session),
// ICE restart when its path breaks, and its own tile: video, path and quality. Mute/camera/screen
// state both ways, invitations, chat, a timer, and quality reported to the server.
// Early ICE (docs/signaling.md): while it rings, each ringing device of the callee and each
// device in the call set up a peer connection with no media (`call.early`, by device session),
// so answering only opens the callee's devices and attaches the tracks (replaceTrack): the
// first remote frame follows the click within a round trip, with no page load and no
// renegotiation. A ringing page mounts this screen hidden (ringer.js) and shows it on answer.
// All of the call's state lives in one object, `call` (window.traverseCall, the tests' hook);
// `call.pc`, `call.peerMedia`, `call.quality` and `call.report` describe the first peer (the
// other party of a one-to-one call), and `call.peerList()` every peer.
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

export function init(root, opts = {}) {
  // Mounted by a ringing page (ringer.js): that page's socket, and no page of our own.
  const mounted = !!opts.signal;
  const $ = (id) => root.querySelector(`#${id}`);
  const data = root.dataset;
  const ui = {
    status: $("call-status"), conn: $("conn-type"), quality: $("quality"), timer: $("timer"),
    error: $("call-error"), local: $("local"), tiles: $("tiles"), primaryTile: $("tile-primary"),
    mute: $("mute"), camera: $("camera"), screen: $("screen"), hangup: $("hangup"),
    accept: $("accept"), acceptAudio: $("accept-audio"), decline: $("decline"), takeOver: $("take-over"),
    mic: $("mic"), cam: $("cam"), ringing: $("ringing-actions"), controls: $("in-call-controls"),
    inviteForm: $("invite-form"), inviteName: $("invite-username"), invites: $("invites"),
    title: $("call-title"), warning: $("relay-warning"),
    chatForm: $("chat-form"), chatText: $("chat-text"), chatLog: $("chat-log"),
  };
  const call = (window.traverseCall = {
    id: data.call,
    role: data.role,
    kind: data.kind,
    serverState: data.state,
    ringingMe: data.ringing === "1",
    earlyIce: data.earlyIce === "1",
    early: new Map(), // device session -> peer negotiating before the answer (early ICE)
    earlyErrors: [],
    accepting: false,
    mounted,
    shown: !mounted, // a mounted screen shows once answered
    me: null, // my user id (from welcome)
    status: "starting",
    endReason: null,
    connectedAt: null,
    answeredAt: null,
    mediaFlowingAt: null,
    connections: 0,
    ice: null,
    errors: [],
    dropped: [],
    iceRestarts: 0,
    recoveries: 0,
    lastRecoveryMs: null,
    signalingSessions: 0,
    signalingDrops: 0,
    statsSent: 0,
    chat: [], // {user, name, text, at}
    invites: [], // {user, username, state: ringing|declined|no_answer|joined}
    sharing: false,
    screenTrack: null,
    heldBy: sessionStorage.getItem(`traverse.call.${data.call}`) || "",
    forceRelay: data.forceRelay === "1" || localStorage.getItem("traverse.forceRelay") === "1",
    signal: null,
    localStream: null,
    ended: false,
    rtcConfig: { iceServers: [], iceTransportPolicy: "all" },
    peers: new Map(), // user id -> peer (one device per person in a call)
    steps: new Map(), // user id (or "call") -> the step of the last frame taken about them
    staleFrames: 0, // presence frames ignored: older than one already taken
    stepFloor: 0, // the step of this device's join: what its `joined` said is newer than any frame below it
    primary: null, // the user id of the first peer: the header pills and the first tile
  });
  // The first peer, as a one-to-one call has it.
  call.rtcConfig.iceTransportPolicy = call.forceRelay ? "relay" : "all";
  const first = () => (call.primary != null ? call.peers.get(call.primary) : null) || null;
  Object.defineProperties(call, {
    pc: { get: () => (first() ? first().pc : null) },
    peerSession: { get: () => (first() ? first().session : null) },
    peerMedia: { get: () => (first() ? first().media : null) },
    quality: { get: () => (first() ? first().quality : null) },
    report: { get: () => (first() ? first().report : null) },
    polite: { get: () => (first() ? first().polite : data.role !== "caller") },
  });
  call.earlyList = () => [...call.early.values()].map((p) => ({
    user: p.user, session: p.session,
    pc: p.pc ? { signaling: p.pc.signalingState, connection: p.pc.connectionState, ice: p.pc.iceConnectionState } : null,
  }));
  call.peerList = () => [...call.peers.values()].map((p) => ({
    user: p.user, session: p.session, name: p.name, status: p.status, media: p.media,
    quality: p.quality, path: p.report ? p.report.connectionType : null,
    connected: !!p.pc && p.pc.connectionState === "connected",
    pc: p.pc ? { signaling: p.pc.signalingState, connection: p.pc.connectionState, ice: p.pc.iceConnectionState, gathering: p.pc.iceGatheringState, candidatesSent: p.sentCandidates || 0, candidatesGot: p.gotCandidates || 0, candidateErrors: p.candidateErrors || [] } : null,
  }));

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
    for (const peer of call.peers.values()) closePeerConnection(peer);
    closeEarly(() => true);
    if (call.localStream) for (const t of call.localStream.getTracks()) t.stop();
    if (call.screenTrack) call.screenTrack.stop();
    if (mounted) for (const [type, fn] of listening) signal.off(type, fn);
    else if (call.signal) call.signal.close();
    for (const b of [ui.hangup, ui.mute, ui.camera, ui.screen, ui.accept, ui.acceptAudio, ui.decline]) if (b) b.disabled = true;
    if (reason === "busy") { tones.play("busy"); setTimeout(() => tones.stop(), 3000); }
    // Embedded (an integrator's page) there is no history page here: the ended screen stays.
    if (redirect && data.detailUrl && call.shown) setTimeout(() => { location.href = data.detailUrl; }, 3500);
    if (opts.onEnd) opts.onEnd(call);
  }

  // Declared before anything can end the call (finish() clears them).
  const timers = { stats: null, clock: null };
  let refreshTimer = null;
  // The handlers this screen added to the socket: a mounted screen takes them off when it ends,
  // and hears only its own call.
  const listening = [];
  if (data.state === "ended") { finish(data.endReason || "hangup"); return call; }

  const signal = (call.signal = opts.signal || new Signal(data.wsPath));
  const PAGE_FRAMES = new Set(["welcome", "resumed", "close", "finished"]);
  const listen = {
    on(type, fn) {
      const wrapped = (msg) => {
        if (!PAGE_FRAMES.has(type) && msg && msg.call && msg.call !== call.id) return;
        fn(msg);
      };
      listening.push([type, wrapped]);
      signal.on(type, wrapped);
      return listen;
    },
  };
  // A reconnect keeps this device's relays and credential grant (the server extends it).
  // The call's id: relays are chosen with its other side in mind (the relay they hold).
  // Embedded, the page has no session: the ticket it was opened with brings it in once, then
  // the device token from the welcome (reconnects, resumes, ICE refreshes).
  call.deviceToken = null;
  if (!mounted) signal.params = () => ({
    keep: call.ice && call.ice.grant,
    call: data.call,
    ...(data.ticket ? (call.deviceToken ? { device: call.deviceToken } : { ticket: data.ticket }) : {}),
  });
  if (!mounted) initRinger({ signal, exceptCall: call.id });

  // --- local media ----------------------------------------------------------------------
  let wantVideo = data.kind === "video" && !(call.ringingMe && data.video === "0");
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
        showError(`No microphone or camera (${err.name}): you can still see and hear the others.`);
      }
    }
    if (call.localStream) ui.local.srcObject = call.localStream;
    // Answered without the camera, a video call can still turn it on (it opens then).
    const camera = !!call.localStream && call.localStream.getVideoTracks().length > 0;
    ui.camera.hidden = !call.localStream || (!camera && data.kind !== "video");
    if (!camera && data.kind === "video") { ui.camera.textContent = "Camera on"; ui.camera.classList.add("active"); }
    ui.screen.hidden = !navigator.mediaDevices.getDisplayMedia;
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

  // The track every peer connection sends for `kind`: the screen while it is shared.
  function outgoing(kind) {
    if (kind === "video" && call.screenTrack) return call.screenTrack;
    if (!call.localStream) return null;
    return (kind === "audio" ? call.localStream.getAudioTracks() : call.localStream.getVideoTracks())[0] || null;
  }

  // Send `track` as this kind on every peer connection: replace what is sent (no renegotiation),
  // or add it where nothing of that kind is sent yet (perfect negotiation renegotiates).
  async function sendEverywhere(kind, track) {
    for (const peer of call.peers.values()) {
      if (!peer.pc || peer.pc.connectionState === "closed") continue;
      const transceiver = peer.pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === kind);
      const sender = transceiver && transceiver.sender;
      if (sender && sender.track !== track) {
        if (transceiver.direction === "recvonly" && track) transceiver.direction = "sendrecv";
        await sender.replaceTrack(track);
      } else if (!sender && track) {
        peer.pc.addTrack(track, call.localStream || new MediaStream([track]));
      }
    }
  }

  async function switchDevice(kind, deviceId) {
    const constraints = kind === "audio" ? { audio: { deviceId: { exact: deviceId } } } : { video: { deviceId: { exact: deviceId }, width: 640, height: 360 } };
    try {
      const fresh = await navigator.mediaDevices.getUserMedia(constraints);
      const track = fresh.getTracks()[0];
      const old = kind === "audio" ? call.localStream.getAudioTracks()[0] : call.localStream.getVideoTracks()[0];
      track.enabled = old ? old.enabled : true;
      if (old) { call.localStream.removeTrack(old); old.stop(); }
      call.localStream.addTrack(track);
      if (!(kind === "video" && call.screenTrack)) await sendEverywhere(kind, track);
    } catch (err) {
      showError(`Could not switch to that device: ${err.message}`);
    }
  }
  ui.mic.addEventListener("change", () => switchDevice("audio", ui.mic.value));
  ui.cam.addEventListener("change", () => switchDevice("video", ui.cam.value));

  // Screen share: the screen replaces the camera on every peer connection (or is added in a
  // voice call), and the camera comes back when sharing stops (button, or the browser's bar).
  async function startScreenShare() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      if (err.name !== "NotAllowedError") showError(`Could not share the screen: ${err.message}`);
      return;
    }
    call.screenTrack = stream.getVideoTracks()[0];
    call.sharing = true;
    call.screenTrack.addEventListener("ended", () => stopScreenShare());
    ui.local.srcObject = stream;
    ui.screen.textContent = "Stop sharing";
    ui.screen.classList.add("active");
    await sendEverywhere("video", call.screenTrack);
    sendMediaState();
  }
  async function stopScreenShare() {
    if (!call.screenTrack) return;
    const track = call.screenTrack;
    call.screenTrack = null;
    call.sharing = false;
    track.stop();
    ui.local.srcObject = call.localStream;
    ui.screen.textContent = "Share screen";
    ui.screen.classList.remove("active");
    await sendEverywhere("video", outgoing("video"));
    sendMediaState();
  }

  function mediaState() {
    const s = call.localStream;
    return {
      audio: !!s && s.getAudioTracks().some((t) => t.enabled),
      video: !!s && s.getVideoTracks().some((t) => t.enabled),
      screen: !!call.screenTrack,
    };
  }
  function sendMediaState() {
    if (call.joined) signal.send("media-state", call.id, mediaState());
  }

  // --- peers and their tiles ------------------------------------------------------------
  function tileFor(peer) {
    if (call.primary === peer.user) return ui.primaryTile;
    const tile = ui.primaryTile.cloneNode(true);
    tile.removeAttribute("id");
    for (const el of tile.querySelectorAll("[id]")) el.removeAttribute("id");
    tile.querySelector("video").srcObject = null;
    tile.dataset.user = peer.user;
    ui.tiles.insertBefore(tile, ui.local);
    return tile;
  }

  function newPeer({ user, session, name, username }) {
    return {
      user, session, name: name || username || `#${user}`, pc: null, media: null, quality: null,
      report: null, status: "waiting", polite: call.me != null && call.me > user,
      makingOffer: false, ignoreOffer: false, restartsInARow: 0, restartTimer: null,
      brokenSince: null, lastSample: null, tile: null, early: false, remoteStream: null,
    };
  }

  // A peer in the call gets its tile (and the header pills, if it is the first).
  function seat(peer) {
    if (call.primary == null) call.primary = peer.user;
    call.peers.set(peer.user, peer);
    peer.tile = tileFor(peer);
    peer.tile.hidden = false;
    peer.tile.dataset.user = peer.user;
  }

  function upsertPeer({ user, session, name, username, media }) {
    let peer = call.peers.get(user);
    if (!peer) {
      peer = newPeer({ user, session, name, username });
      seat(peer);
    }
    if (session) peer.session = session;
    if (name) peer.name = name;
    peer.tile.querySelector(".tile-name").textContent = peer.name;
    if (media) showPeerMedia(peer, media);
    showWho();
    return peer;
  }

  // A group call names everyone in it, and its tiles get a row each on a narrow screen.
  function showWho() {
    const names = [...call.peers.values()].filter((p) => p.status !== "left").map((p) => p.name);
    ui.tiles.classList.toggle("group", names.length > 1);
    if (names.length > 1 && ui.title) ui.title.textContent = `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  }

  function setPeerStatus(peer, text) {
    peer.status = text;
    peer.tile.querySelector(".tile-status").textContent = text;
  }

  function showPeerMedia(peer, media) {
    peer.media = media;
    peer.tile.querySelector(".flag-muted").hidden = media.audio;
    peer.tile.querySelector(".flag-camera").hidden = media.video || media.screen || call.kind === "voice";
    peer.tile.querySelector(".flag-screen").hidden = !media.screen;
    peer.tile.classList.toggle("sharing", !!media.screen);
  }

  function dropPeer(user) {
    const peer = call.peers.get(user);
    if (!peer) return;
    closePeerConnection(peer);
    if (peer.tile !== ui.primaryTile) {
      peer.tile.remove();
      call.peers.delete(user);
    } else {
      setPeerStatus(peer, "left");
    }
    showWho();
  }

  // --- early ICE: negotiating while it rings -------------------------------------------------
  // A device to negotiate with before the answer. In the call (the caller), this side offers;
  // ringing, it answers the offer that comes.
  function earlyPeer(info) {
    if (!call.earlyIce || call.ended || call.early.has(info.session)) return;
    if (call.joined && call.peers.has(info.user) && call.peers.get(info.user).session === info.session) return;
    const peer = newPeer(info);
    peer.early = true;
    peer.offers = !!call.joined;
    call.early.set(info.session, peer);
    if (peer.offers) startPeerConnection(peer);
  }

  function closeEarly(which) {
    for (const [session, peer] of [...call.early]) {
      if (!which(peer)) continue;
      closePeerConnection(peer);
      call.early.delete(session);
    }
  }

  // Send what this device sends, on a connection that was set up with nothing (no renegotiation:
  // its transceivers are sendrecv already).
  function attachTracks(peer) {
    if (!peer.pc) return;
    for (const t of peer.pc.getTransceivers()) {
      const kind = t.receiver.track && t.receiver.track.kind;
      const track = kind ? outgoing(kind) : null;
      if (track && t.sender.track !== track && t.direction === "sendrecv") t.sender.replaceTrack(track).catch(() => {});
    }
  }

  // The device that rang early is in the call now: its connection (up already, most likely)
  // becomes the peer's, and the media starts.
  function promote(peer) {
    call.early.delete(peer.session);
    peer.early = false;
    peer.polite = call.me != null && call.me > peer.user;
    seat(peer);
    peer.tile.querySelector(".tile-name").textContent = peer.name;
    showWho();
    attachTracks(peer);
    if (peer.remoteStream) showRemote(peer);
    if (peer.pc && peer.pc.connectionState === "connected") onPeerConnected(peer);
    else setPeerStatus(peer, "connecting");
    return peer;
  }

  function showRemote(peer) {
    peer.tile.querySelector("video").srcObject = peer.remoteStream;
    watchFirstFrame(peer);
  }

  function closePeerConnection(peer) {
    clearTimeout(peer.restartTimer);
    if (peer.pc) { peer.pc.close(); peer.pc = null; }
  }

  function pcAlive(peer) {
    return !!peer && !!peer.pc && ["new", "connecting", "connected", "disconnected"].includes(peer.pc.connectionState);
  }

  function anyConnected() {
    return [...call.peers.values()].some((p) => p.pc && p.pc.connectionState === "connected");
  }

  function startPeerConnection(peer) {
    closePeerConnection(peer);
    const pc = (peer.pc = new RTCPeerConnection(call.rtcConfig));
    peer.lastSample = null; // its counters start again from zero
    peer.counted = false;
    peer.makingOffer = false;
    peer.ignoreOffer = false;
    for (const kind of ["audio", "video"]) {
      if (peer.awaitsEarlyOffer) break; // answered before the early offer came: it brings them
      const track = peer.early ? null : outgoing(kind);
      if (track) pc.addTrack(track, call.localStream || new MediaStream([track]));
      else if (kind !== "audio" && call.kind !== "video") continue;
      // Early, the offerer's transceivers send nothing yet, but are negotiated to send: the
      // answer only attaches the tracks. (The ringing side's come with the offer.)
      else if (peer.early && peer.offers) pc.addTransceiver(kind, { direction: "sendrecv", streams: [call.localStream || new MediaStream()] });
      else if (!peer.early) pc.addTransceiver(kind, { direction: "recvonly" });
    }
    const send = (type, body) => signal.send(type, call.id, { to: peer.session, ...body });
    pc.ontrack = ({ streams, track }) => {
      // A track without a stream (the early answerer's) joins the peer's one stream.
      if (streams[0]) peer.remoteStream = streams[0];
      else {
        if (!peer.remoteStream) peer.remoteStream = new MediaStream();
        if (!peer.remoteStream.getTracks().includes(track)) peer.remoteStream.addTrack(track);
      }
      if (peer.tile) showRemote(peer);
    };
    pc.onicecandidateerror = (ev) => {
      (peer.candidateErrors = peer.candidateErrors || []).push(`${ev.errorCode} ${ev.errorText} ${ev.url}`);
      reportRelayFailure(ev.url);
    };
    let gatheringSince = null;
    const gathered = new Map(); // relay URL -> ms to its first relay candidate
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === "gathering" && gatheringSince == null) gatheringSince = performance.now();
      if (pc.iceGatheringState === "complete") reportGathered(gathered);
    };
    pc.onicecandidate = (ev) => {
      const { candidate } = ev;
      peer.sentCandidates = (peer.sentCandidates || 0) + 1;
      const url = ev.url || (candidate && candidate.url); // the server that gave the candidate
      if (candidate && candidate.type === "relay" && url && gatheringSince != null && !gathered.has(url)) {
        gathered.set(url, Math.round(performance.now() - gatheringSince));
      }
      send("candidate", { candidate: candidate ? candidate.toJSON() : null });
    };
    const makeOffer = async () => {
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        send(pc.localDescription.type, { description: pc.localDescription.toJSON() });
      } catch (err) {
        showError(`Negotiation failed: ${err.message}`);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onnegotiationneeded = () => {
      if (peer.early) { if (peer.offers) makeOffer(); return; } // the ringing side only answers
      // The first offer of a pair comes from its impolite side. Both sides offering at once
      // is resolved by perfect negotiation, but the polite side's rolled-back offer left
      // Chromium's ICE gathering stalled for the answer (seen: no candidates, ICE "new", in 1
      // of 3 group calls). The polite side offers anyway if nothing came within 3 s.
      if (peer.polite && !pc.remoteDescription) {
        clearTimeout(peer.offerTimer);
        peer.offerTimer = setTimeout(() => { if (peer.pc === pc && !pc.remoteDescription) makeOffer(); }, 3000);
        return;
      }
      makeOffer();
    };
    pc.onconnectionstatechange = () => {
      if (peer.pc !== pc || call.ended) return;
      const s = pc.connectionState;
      if (peer.early) {
        // Ringing: nothing shows. A connection that fails early is set up again on answer.
        if (s === "connected") call.earlyConnectedAt = call.earlyConnectedAt || performance.timeOrigin + performance.now();
        return;
      }
      if (s === "connected") {
        onPeerConnected(peer);
      } else if (s === "disconnected") {
        peer.brokenSince = peer.brokenSince || Date.now();
        setPeerStatus(peer, "reconnecting media");
        setStatus("reconnecting media");
        clearTimeout(peer.restartTimer);
        peer.restartTimer = setTimeout(() => { if (peer.pc === pc && pc.connectionState === "disconnected") restartIce(peer); }, DISCONNECTED_GRACE_MS);
      } else if (s === "failed") {
        peer.brokenSince = peer.brokenSince || Date.now();
        restartIce(peer);
      } else {
        setPeerStatus(peer, s);
        if (!anyConnected()) setStatus(s);
      }
    };
    return pc;
  }

  function onPeerConnected(peer) {
    clearTimeout(peer.restartTimer);
    if (peer.brokenSince) {
      call.lastRecoveryMs = Date.now() - peer.brokenSince;
      call.recoveries += 1;
      peer.brokenSince = null;
    }
    peer.restartsInARow = 0;
    if (!call.connectedAt) { call.connectedAt = Date.now(); startClock(); }
    // Peer connections that got connected: a call that never renegotiates keeps this at
    // one per peer.
    if (!peer.counted) { peer.counted = true; call.connections += 1; }
    setPeerStatus(peer, "connected");
    setStatus("connected");
    reportConnection(peer);
    startStats();
  }

  // A path broke (a relay died, the network changed): restart ICE on the same connection,
  // first on every path, then relay-only, with fresh credentials. After that, a one-to-one
  // call has failed; in a group call only that peer's connection is given up.
  async function restartIce(peer) {
    const pc = peer.pc;
    if (!pc || call.ended) return;
    peer.restartsInARow += 1;
    if (peer.restartsInARow > MAX_RESTARTS) {
      if (call.peers.size > 1) {
        closePeerConnection(peer);
        setPeerStatus(peer, "no network path");
        return;
      }
      signal.send("hangup", call.id, { reason: "failed" });
      finish("failed");
      return;
    }
    call.iceRestarts += 1;
    setPeerStatus(peer, "reconnecting media");
    setStatus("reconnecting media");
    await refreshIce().catch(() => {});
    if (peer.pc !== pc) return;
    const relayOnly = call.forceRelay || peer.restartsInARow >= 2;
    pc.setConfiguration({ ...call.rtcConfig, iceTransportPolicy: relayOnly ? "relay" : "all" });
    pc.restartIce();
    clearTimeout(peer.restartTimer);
    // A restart that doesn't get connected within 10 s is followed by the next one.
    peer.restartTimer = setTimeout(() => { if (peer.pc === pc && pc.connectionState !== "connected") restartIce(peer); }, 10000);
  }

  function senderOf(msg) {
    const early = call.early.get(msg.body.fromSession);
    if (early) return early;
    return upsertPeer({ user: msg.body.from, session: msg.body.fromSession });
  }

  async function onDescription(peer, description) {
    if (peer.early && !peer.offers && description.type === "offer" && peer.pc && peer.pc.remoteDescription) {
      // Ringing, an offer comes from a fresh connection of that device (its page joined
      // again): this side starts afresh too (early connections never renegotiate).
      closePeerConnection(peer);
      peer.remoteStream = null;
    }
    if (!peer.pc) startPeerConnection(peer);
    const pc = peer.pc;
    const collision = description.type === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
    peer.ignoreOffer = !peer.polite && collision;
    if (peer.ignoreOffer) return;
    // Whether this is the early offer is decided now: the answer may promote the peer while
    // the offer is applied (CI: it then went out receive-only, with nothing attached).
    const earlyOffer = description.type === "offer" && (peer.early || peer.awaitsEarlyOffer);
    await pc.setRemoteDescription(description);
    if (earlyOffer) {
      // Negotiated to send, though nothing is sent until the answer attaches the tracks; if
      // it came already (while it was applied, or before it came), they go on now.
      for (const t of pc.getTransceivers()) if (t.direction === "recvonly") t.direction = "sendrecv";
      peer.awaitsEarlyOffer = false;
      attachTracks(peer);
    }
    if (description.type === "offer") {
      await pc.setLocalDescription();
      signal.send("answer", call.id, { to: peer.session, description: pc.localDescription.toJSON() });
    }
  }

  async function onCandidate(peer, candidate) {
    peer.gotCandidates = (peer.gotCandidates || 0) + 1;
    if (!peer.pc) return;
    try {
      await peer.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!peer.ignoreOffer) showError(`Bad candidate: ${err.message}`);
    }
  }

  // --- stats: the path, quality, first frame ----------------------------------------------
  async function selectedPair(pc) {
    if (!pc) return null;
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
      localCandidate: `${local.address || local.ip}:${local.port}`,
      rttMs: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 10000) / 10 : null,
      stats,
    };
  }
  call.selectedPair = async (user) => {
    const peer = user != null ? call.peers.get(user) : first();
    const sel = await selectedPair(peer && peer.pc);
    if (!sel) return null;
    const { stats: _stats, ...rest } = sel;
    return rest;
  };
  // Bytes of media received so far (all inbound RTP streams of every peer connection, or of
  // one peer's): it keeps growing while media flows.
  call.inboundBytes = async (user) => {
    let total = 0;
    for (const peer of call.peers.values()) {
      if (!peer.pc || (user != null && peer.user !== user)) continue;
      (await peer.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") total += s.bytesReceived || 0; });
    }
    return total;
  };
  // RTP bytes sent and received on every connection, early ones included (none while it rings).
  call.rtpBytes = async () => {
    const out = { sent: 0, received: 0 };
    for (const peer of [...call.peers.values(), ...call.early.values()]) {
      if (!peer.pc) continue;
      (await peer.pc.getStats()).forEach((s) => {
        if (s.type === "outbound-rtp") out.sent += s.bytesSent || 0;
        if (s.type === "inbound-rtp") out.received += s.bytesReceived || 0;
      });
    }
    return out;
  };
  // What one peer's video shows: its size, and frames decoded so far.
  call.inboundVideo = async (user) => {
    const peer = call.peers.get(user);
    let out = null;
    if (peer && peer.pc) {
      (await peer.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") out = { width: s.frameWidth || 0, height: s.frameHeight || 0, frames: s.framesDecoded || 0 };
      });
    }
    return out;
  };

  // The relay's name for a TURN URL: iceServers[i] and relays[i] describe the same relay.
  function relayName(url) {
    if (!call.ice) return url;
    const i = call.ice.iceServers.findIndex((s) => [].concat(s.urls).includes(url));
    return i >= 0 && call.ice.relays[i] ? call.ice.relays[i].name : url;
  }

  function pathText(sel) {
    return sel.connectionType === "relay" ? `relayed via ${relayName(sel.relayUrl)}` : `direct (${sel.connectionType})`;
  }

  function showPath(peer, sel) {
    const text = pathText(sel);
    const pill = peer.tile.querySelector(".tile-path");
    pill.textContent = sel.connectionType === "relay" ? "relayed" : "direct";
    pill.title = text;
    if (peer === first()) {
      ui.conn.textContent = text;
      ui.conn.classList.remove("muted");
    }
  }

  function sendReport(peer, sel) {
    peer.report = { connectionType: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs, localType: sel.localType };
    showPath(peer, sel);
    // The server keeps one path per participant: the first peer's (the other party 1:1).
    if (peer === first()) signal.send("report", call.id, { connectionType: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs });
  }

  // The path at "connected" is not the last word: a remote candidate that was peer-reflexive
  // turns host or srflx once its own candidate arrives, and ICE may move to a better pair. The
  // record follows: report again whenever the selected pair's path changes.
  function pathChanged(peer, sel) {
    return !peer.report || sel.connectionType !== peer.report.connectionType || sel.relayUrl !== peer.report.relayUrl;
  }

  async function recheckPath(peer) {
    if (!peer.pc || call.ended) return;
    const sel = await selectedPair(peer.pc);
    if (sel && pathChanged(peer, sel)) sendReport(peer, sel);
  }

  // Right at "connected" getStats() may not name the selected pair yet: try again shortly.
  async function reportConnection(peer, tries = 20) {
    const sel = await selectedPair(peer.pc);
    if (!sel) {
      if (tries > 0 && peer.pc && !call.ended) setTimeout(() => reportConnection(peer, tries - 1), 250);
      return;
    }
    sendReport(peer, sel);
    setTimeout(() => recheckPath(peer).catch(() => {}), 1000);
    const ice = peer.pc.getSenders().map((s) => s.transport && s.transport.iceTransport).find(Boolean);
    if (ice && "onselectedcandidatepairchange" in ice) {
      ice.onselectedcandidatepairchange = () => recheckPath(peer).catch(() => {});
    }
  }

  async function sample(peer) {
    const sel = await selectedPair(peer.pc);
    if (!sel) return;
    let lost = 0, received = 0, bytes = 0;
    sel.stats.forEach((s) => {
      if (s.type === "inbound-rtp") { lost += s.packetsLost || 0; received += s.packetsReceived || 0; bytes += s.bytesReceived || 0; }
    });
    const now = performance.now();
    const prev = peer.lastSample;
    peer.lastSample = { lost, received, bytes, at: now };
    if (!prev) return;
    const dLost = Math.max(0, lost - prev.lost), dRecv = Math.max(0, received - prev.received);
    const lossPct = dLost + dRecv ? Math.round((1000 * dLost) / (dLost + dRecv)) / 10 : 0;
    const bitrateKbps = Math.max(0, Math.round(((bytes - prev.bytes) * 8) / (now - prev.at)));
    const q = grade(sel.rttMs, lossPct);
    peer.quality = { grade: q, rttMs: sel.rttMs, lossPct, bitrateKbps, path: sel.connectionType };
    const text = `${q}${sel.rttMs != null ? ` · ${Math.round(sel.rttMs)} ms` : ""}${lossPct ? ` · ${lossPct}% loss` : ""}`;
    const pill = peer.tile.querySelector(".tile-quality");
    pill.textContent = text;
    pill.className = `pill tile-quality quality-${q}`;
    if (pathChanged(peer, sel)) sendReport(peer, sel);
    else showPath(peer, sel);
    if (peer !== first()) return;
    ui.quality.textContent = text;
    ui.quality.className = `pill quality-${q}`;
    signal.send("stats", call.id, { path: sel.connectionType, relayUrl: sel.relayUrl, rttMs: sel.rttMs, lossPct, bitrateKbps });
    call.statsSent += 1;
  }

  function sampleAll() {
    for (const peer of call.peers.values()) {
      if (peer.pc && peer.pc.connectionState === "connected") sample(peer).catch(() => {});
    }
  }

  function startStats() {
    if (timers.stats) return;
    sampleAll();
    timers.stats = setInterval(sampleAll, STATS_INTERVAL_MS);
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
  function watchFirstFrame(peer) {
    if (call.mediaFlowingAt || peer.watchingFrames) return;
    peer.watchingFrames = true;
    const poll = setInterval(async () => {
      if (!peer.pc || call.mediaFlowingAt) { clearInterval(poll); return; }
      (await peer.pc.getStats()).forEach((s) => {
        if (s.type !== "inbound-rtp" || call.mediaFlowingAt) return;
        if ((s.kind === "video" && s.framesDecoded > 0) || (call.kind === "voice" && s.kind === "audio" && s.totalSamplesReceived > 0)) {
          call.mediaFlowingAt = performance.timeOrigin + performance.now(); // epoch ms, sub-ms
        }
      });
    }, 20);
  }

  // TURN credentials expire (ttl); long calls fetch fresh ones before they do, so an ICE restart
  // or a new relay candidate late in the call still authenticates.
  async function refreshIce() {
    const url = new URL(data.iceUrl, location.href);
    if (call.ice && call.ice.grant) url.searchParams.set("keep", call.ice.grant);
    url.searchParams.set("call", data.call);
    const headers = call.deviceToken ? { Authorization: `Device ${call.deviceToken}` } : {};
    const res = await fetch(url, { credentials: "same-origin", headers });
    if (res.status === 429) { // ice_limited: the credentials this page has still hold for now
      const wait = Math.max(1, Number(res.headers.get("Retry-After")) || 30);
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => refreshIce().catch((err) => showError(`Could not refresh relay credentials: ${err.message}`)), wait * 1000);
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const fresh = await res.json();
    call.ice = fresh;
    showRelayWarning(fresh);
    call.rtcConfig = { ...call.rtcConfig, iceServers: fresh.iceServers };
    for (const peer of call.peers.values()) if (peer.pc) peer.pc.setConfiguration(call.rtcConfig);
    scheduleIceRefresh(fresh);
  }
  // A TURN server we were given refused or never answered an allocation: tell the server once
  // per relay URL per page, and it probes that relay again at once (a broken relay is withdrawn
  // within seconds for everyone, instead of at the next sweep).
  const reportedRelays = new Set();
  function reportRelayFailure(url) {
    if (!url || !/^turns?:/.test(url) || reportedRelays.has(url)) return;
    const given = call.ice && call.ice.iceServers.some((s) => [].concat(s.urls).includes(url));
    if (!given) return;
    reportedRelays.add(url);
    call.relayFailuresReported = reportedRelays.size;
    signal.send("relay-failure", null, { relayUrl: url, problem: "allocation" });
  }

  // How long each relay took to give a candidate: once per relay URL per page, it feeds that
  // relay's score for this network (the server keeps only relays it handed to this user).
  const gatherReported = new Set();
  function reportGathered(gathered) {
    const fresh = [...gathered].filter(([url]) => !gatherReported.has(url)).slice(0, 4);
    if (!fresh.length) return;
    for (const [url] of fresh) gatherReported.add(url);
    call.gatherReported = [...gatherReported];
    signal.send("relay-gather", null, { gathered: fresh.map(([relayUrl, ms]) => ({ relayUrl, ms })) });
  }

  // No relay could be handed out: the call may still connect directly (the server still gives
  // STUN), but not behind strict NATs or firewalls. Say so, with the server's reason.
  function showRelayWarning(ice) {
    const warning = $("relay-warning");
    if (ice.status === "ok") { warning.hidden = true; return; }
    if (!call.mediaFlowingAt) ui.conn.textContent = call.forceRelay ? "no relay" : "no relay: direct only";
    warning.textContent = call.forceRelay
      ? "No relay is available right now, and this device uses relays only (Settings): the call can't connect until one is back."
      : ice.reason || "No relay is available right now: this call may fail behind strict NATs or firewalls.";
    warning.hidden = false;
  }
  function scheduleIceRefresh(ice) {
    clearTimeout(refreshTimer);
    const wait = Math.max(30_000, Date.parse(ice.refreshAt) - Date.now());
    refreshTimer = setTimeout(() => refreshIce().catch((err) => showError(`Could not refresh relay credentials: ${err.message}`)), wait);
  }

  // --- invitations and chat -----------------------------------------------------------------
  function showInvites() {
    const TEXT = { ringing: "ringing…", declined: "declined", no_answer: "didn't answer", joined: "joined" };
    ui.invites.replaceChildren(...call.invites.map((i) => {
      const li = document.createElement("li");
      li.textContent = `@${i.username}: ${TEXT[i.state] || i.state}`;
      return li;
    }));
    ui.invites.hidden = call.invites.length === 0;
  }
  function invite(user, state) {
    const entry = call.invites.find((i) => i.user === user.id);
    if (entry) entry.state = state;
    else if (user.username) call.invites.push({ user: user.id, username: user.username, state });
    showInvites();
  }
  let inviteRef = null;
  ui.inviteForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const username = ui.inviteName.value.trim();
    if (!username) return;
    inviteRef = signal.send("invite", call.id, { username });
    ui.inviteName.value = "";
  });

  function showChat(body) {
    call.chat.push(body);
    const li = document.createElement("li");
    const who = document.createElement("strong");
    who.textContent = body.user === call.me ? "You" : body.name;
    const when = document.createElement("time");
    when.dateTime = body.at;
    when.textContent = new Date(body.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const text = document.createElement("span");
    text.textContent = body.text; // text, never HTML
    li.append(who, " ", text, " ", when);
    ui.chatLog.append(li);
    ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
  }
  ui.chatForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.chatText.value.trim();
    if (!text) return;
    signal.send("chat", call.id, { text });
    ui.chatText.value = "";
  });

  // --- the call's signaling ---------------------------------------------------------------
  function enter() {
    if (call.ringingMe && !call.joined && call.serverState !== "ended") {
      if (call.accepting) return; // answered already: acceptCall() sent it (queued while away)
      if (data.answer === "1") { signal.send("accept", call.id, { video: wantVideo }); call.answeredAt = Date.now(); return; }
      ui.ringing.hidden = false; // answer from this page
      ui.controls.hidden = true;
      setStatus("ringing");
      if (!mounted) tones.play("ringtone"); // a mounted screen: the page around it rings
      // Negotiate while it rings (the page's devices stay closed): see the module header.
      if (call.earlyIce && data.state === "ringing") earlyRef = signal.send("early", call.id);
      return;
    }
    // After a signaling drop that could not resume, the page says whether it still holds its
    // peer connections: the server then treats this as a resume, and nobody renegotiates.
    signal.send("join", call.id, { resume: [...call.peers.values()].some(pcAlive), replaces: call.heldBy });
  }

  // Answer: open the devices and attach them to the connections that are up already (the
  // early ones), while the server hears of it and tells the caller, who attaches theirs.
  async function acceptCall(video) {
    if (call.accepting || call.joined || call.ended) return;
    call.accepting = true;
    call.answeredAt = performance.timeOrigin + performance.now();
    call.shown = true;
    tones.stop();
    wantVideo = video && data.kind === "video";
    ui.ringing.hidden = true;
    setStatus("connecting");
    await iceReady; // a mounted screen answered at once: its relays' credentials first
    // Nothing negotiated early (an invitation into a call that goes on, early ICE off): the
    // devices first, then the connections, which then carry them from their first offer.
    const early = call.early.size > 0;
    if (!early) await openMedia();
    signal.send("accept", call.id, { video: wantVideo });
    if (early) await openMedia();
    call.devicesOpenAt = performance.timeOrigin + performance.now(); // for the benchmark
    if (call.ended) { if (call.localStream) for (const t of call.localStream.getTracks()) t.stop(); return; }
    for (const peer of call.early.values()) attachTracks(peer);
    // Connections that came up while the devices opened: send on them too.
    for (const kind of ["audio", "video"]) if (outgoing(kind)) await sendEverywhere(kind, outgoing(kind));
    sendMediaState();
  }
  call.accept = acceptCall;

  function onJoined(msg) {
    call.joinedAt = performance.timeOrigin + performance.now();
    call.joined = true;
    call.accepting = false;
    call.ringingMe = false;
    call.serverState = msg.body.state;
    if (typeof msg.body.step === "number") call.stepFloor = Math.max(call.stepFloor, msg.body.step);
    call.heldBy = signal.session;
    sessionStorage.setItem(`traverse.call.${call.id}`, signal.session);
    ui.ringing.hidden = true;
    ui.controls.hidden = false;
    ui.takeOver.hidden = true;
    root.classList.add("joined");
    sendMediaState();
    // Answered here: the early connections to the devices in the call are theirs now.
    const promoted = new Set();
    const peers = msg.body.peers.map((p) => {
      const early = call.early.get(p.session);
      // Answered before the caller's early offer came (a quick click on a busy machine): that
      // offer is still the connection. Starting one of our own instead raced it, and the media
      // went out on transceivers the offer never negotiated (connected, but nothing received).
      if (early && !early.pc && !early.offers) early.awaitsEarlyOffer = true;
      if (early && (pcAlive(early) || early.awaitsEarlyOffer)) {
        promoted.add(promote(early));
        if (p.media) showPeerMedia(early, p.media);
        return early;
      }
      return upsertPeer(p);
    });
    closeEarly(() => true);
    for (const e of msg.body.early || []) earlyPeer(e); // in the call: ringing devices to set up
    if (!peers.length) {
      setStatus("ringing");
      if (call.role === "caller" && msg.body.state === "ringing") { tones.play("ringback"); ui.hangup.textContent = "Cancel"; }
      return;
    }
    tones.stop();
    for (const peer of peers) {
      if (msg.body.resumed && pcAlive(peer)) continue;
      if (promoted.has(peer)) continue;
      setPeerStatus(peer, "connecting");
      startPeerConnection(peer);
    }
    if (msg.body.resumed && first() && pcAlive(first())) setStatus(first().pc.connectionState === "connected" ? "connected" : first().pc.connectionState);
    else setStatus(anyConnected() ? "connected" : "connecting");
  }

  // A frame about a peer's presence (peer-joined, -reconnecting, -left) carries the step of the
  // transition it announces, and steps grow in the order the server committed them. Frames are
  // delivered by whichever server process made the change, so they can arrive in another order:
  // after a server restart, the new process marks the old one's devices reconnecting while one
  // of them is already resuming, and the `peer-reconnecting` reached this page after that
  // device's `peer-joined`, which left the page at "signaling dropped" for good. A frame older
  // than one already taken about that peer is out of date: it is ignored. So is a `state` older
  // than the last one taken (key "call"), and any frame older than this device's `joined`, whose
  // list of peers and state it predates.
  function stale(msg, key = msg.body.user) {
    const step = msg.body.step;
    if (typeof step !== "number") return false; // a server that doesn't number them
    if (step <= Math.max(call.stepFloor, call.steps.get(key) || 0)) {
      call.staleFrames += 1;
      return true;
    }
    call.steps.set(key, step);
    return false;
  }

  let earlyRef = null;
  let iceReady = Promise.resolve(); // a mounted screen's credentials (the call page's come in its welcome)
  listen
    .on("welcome", (msg) => {
      call.signalingSessions += 1;
      if (msg.body.deviceToken) call.deviceToken = msg.body.deviceToken;
      call.me = msg.body.user.id;
      for (const peer of call.peers.values()) peer.polite = call.me > peer.user;
      if (msg.body.ice) {
        call.ice = msg.body.ice;
        scheduleIceRefresh(msg.body.ice);
        showRelayWarning(msg.body.ice);
      } else if (msg.body.iceError) {
        // Asked for credentials too often (ice_limited): keep what this page has, ask again later.
        showError(msg.body.iceError.message);
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(() => refreshIce().catch((err) => showError(`Could not refresh relay credentials: ${err.message}`)), msg.body.iceError.retryAfter * 1000);
      }
      call.rtcConfig = { ...call.rtcConfig, iceServers: call.ice ? call.ice.iceServers : [] };
      for (const peer of call.peers.values()) if (pcAlive(peer)) peer.pc.setConfiguration(call.rtcConfig);
      enter();
    })
    .on("resumed", () => {
      call.signalingSessions += 1;
      // The server's side of the socket is new: it hears again that this device rings early.
      if (earlyRef && call.ringingMe && !call.joined && !call.accepting) earlyRef = signal.send("early", call.id);
    })
    .on("early-ready", (msg) => { for (const p of msg.body.peers) earlyPeer(p); })
    .on("early-peer", (msg) => earlyPeer(msg.body))
    .on("early-left", (msg) => closeEarly((p) => p.session === msg.body.session))
    .on("close", () => { call.signalingDrops += 1; })
    .on("finished", (msg) => { if (!call.ended && msg.code === 4401) finish("hangup"); })
    .on("joined", onJoined)
    .on("state", (msg) => {
      if (stale(msg, "call")) return;
      call.serverState = msg.body.state;
      if (msg.body.state === "connecting") { tones.stop(); ui.hangup.textContent = "Hang up"; }
    })
    .on("peer-joined", (msg) => {
      if (stale(msg)) return;
      const early = call.early.get(msg.body.session);
      // The device that answered rang early: its connection is up; the others' are done.
      closeEarly((p) => p.user === msg.body.user && p !== early);
      if (early && pcAlive(early)) {
        promote(early);
        if (!call.answeredAt) call.answeredAt = Date.now();
        tones.stop();
        ui.hangup.textContent = "Hang up";
        invite({ id: early.user }, "joined");
        if (early.pc.connectionState !== "connected") setStatus("connecting");
        sendMediaState();
        return;
      }
      if (early) closeEarly((p) => p === early);
      const peer = upsertPeer(msg.body);
      if (!call.answeredAt) call.answeredAt = Date.now();
      tones.stop();
      ui.hangup.textContent = "Hang up";
      invite({ id: peer.user }, "joined");
      if (msg.body.resumed && pcAlive(peer)) {
        setPeerStatus(peer, peer.pc.connectionState);
        if (peer === first()) setStatus(peer.pc.connectionState === "connected" ? "connected" : peer.pc.connectionState);
        return;
      }
      setPeerStatus(peer, "connecting");
      setStatus("connecting");
      startPeerConnection(peer);
      sendMediaState();
    })
    .on("peer-reconnecting", (msg) => {
      if (stale(msg)) return;
      // Media may well still flow: keep the peer connection, and wait for the peer's socket.
      const peer = call.peers.get(msg.body.user);
      if (peer) setPeerStatus(peer, "signaling dropped");
      if (peer === first() || call.peers.size <= 1) setStatus(`the other side's signaling dropped; waiting up to ${msg.body.graceSeconds} s`);
    })
    .on("peer-left", (msg) => {
      if (stale(msg)) return;
      const peer = call.peers.get(msg.body.user);
      if (peer && peer === first() && call.peers.size <= 1) setStatus("the other side left; waiting for them to come back");
      dropPeer(msg.body.user);
      if (call.peers.size > 1 || (peer && peer !== first())) setStatus(anyConnected() ? "connected" : "connecting");
    })
    .on("media-state", (msg) => {
      const peer = call.peers.get(msg.body.user);
      if (peer) showPeerMedia(peer, msg.body);
    })
    .on("offer", (msg) => onDescription(senderOf(msg), msg.body.description).catch((e) => showError(e.message)))
    .on("answer", (msg) => onDescription(senderOf(msg), msg.body.description).catch((e) => showError(e.message)))
    .on("candidate", (msg) => onCandidate(senderOf(msg), msg.body.candidate))
    // An invitation is a transition of the invitee too: the same steps as their presence.
    .on("invited", (msg) => { if (!stale(msg, msg.body.user.id)) invite(msg.body.user, "ringing"); })
    .on("invite-ended", (msg) => { if (!stale(msg)) invite({ id: msg.body.user }, msg.body.reason); })
    .on("chat", (msg) => { if (msg.call === call.id) showChat(msg.body); })
    .on("hangup", (msg) => { if (msg.call === call.id) finish(msg.body.reason); })
    .on("answered", (msg) => { if (msg.call === call.id) finish("answered_elsewhere"); })
    .on("taken-over", (msg) => { if (msg.call === call.id) finish("taken_over"); })
    .on("error", (msg) => {
      const code = msg.body.code;
      if (msg.call && msg.call !== call.id) return;
      if (msg.ref && msg.ref === earlyRef) { call.earlyErrors.push(code); return; } // it negotiates after the answer
      if (msg.ref && msg.ref === inviteRef) {
        call.inviteError = { code, message: msg.body.message };
        ui.invites.hidden = false;
        const li = document.createElement("li");
        li.className = "errors";
        li.textContent = msg.body.message;
        ui.invites.append(li);
        return;
      }
      if (code === "call_ended" || code === "not_ringing") finish("hangup");
      else if (code === "answered_elsewhere") finish("answered_elsewhere");
      else if (code === "in_call_elsewhere") {
        setStatus("on another device");
        ui.takeOver.hidden = false;
      } else if (["peer_not_present", "not_a_peer"].includes(code)) {
        call.dropped.push(code); // a peer that just left: its last candidates have nowhere to go
      } else showError(`${code}: ${msg.body.message}`);
    });

  // --- controls -----------------------------------------------------------------------------
  ui.hangup.addEventListener("click", () => {
    const ringingCaller = call.role === "caller" && call.serverState === "ringing";
    signal.send(ringingCaller ? "cancel" : "hangup", call.id);
  });
  ui.accept.addEventListener("click", () => acceptCall(true));
  ui.acceptAudio.addEventListener("click", () => acceptCall(false));
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
  ui.camera.addEventListener("click", async () => {
    if (!call.localStream) return;
    const tracks = call.localStream.getVideoTracks();
    if (!tracks.length) {
      try {
        const fresh = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 } });
        const track = fresh.getVideoTracks()[0];
        call.localStream.addTrack(track);
        ui.local.srcObject = call.localStream;
        if (!call.screenTrack) await sendEverywhere("video", track);
        ui.camera.textContent = "Camera off";
        ui.camera.classList.remove("active");
        sendMediaState();
      } catch (err) {
        showError(`Could not turn the camera on: ${err.message}`);
      }
      return;
    }
    const off = tracks.some((t) => t.enabled);
    tracks.forEach((t) => { t.enabled = !off; });
    ui.camera.textContent = off ? "Camera on" : "Camera off";
    ui.camera.classList.toggle("active", off);
    sendMediaState();
  });
  ui.screen.addEventListener("click", () => (call.screenTrack ? stopScreenShare() : startScreenShare()));

  // A ringing callee's camera and microphone stay closed until they answer.
  const media = call.ringingMe && data.answer !== "1" && data.state !== "ended" ? Promise.resolve() : openMedia();
  if (mounted) {
    // The page's socket is up (or coming back: its welcome enters then). It carries no relay
    // credentials (?ice=0): this call's come over HTTP, before anything is negotiated.
    call.me = signal.welcome ? signal.welcome.body.user.id : null;
    call.signalingSessions = signal.welcome ? 1 : 0; // the page's, which this screen shares
    iceReady = refreshIce().catch((err) => showError(`Could not get relay credentials: ${err.message}`));
    iceReady.then(() => { if (signal.ready && !call.ended) enter(); });
  } else {
    media.finally(() => signal.connect());
  }
  return call;
}

const root = document.getElementById("call");
if (root && !root.closest(".call-overlay")) init(root);
