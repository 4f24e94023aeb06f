// Call tones generated with Web Audio (no files, no CDN): the ringtone for the callee, ringback
// and busy for the caller. Browsers keep an AudioContext suspended until the page has had a user
// gesture; until then the tone is only "wanted", and starts at the first click or key press.

const PATTERNS = {
  // [frequencies in Hz, on seconds, off seconds, gain]
  ringtone: [[440, 480], 2.0, 4.0, 0.18],
  ringback: [[440, 480], 2.0, 4.0, 0.08],
  busy: [[480, 620], 0.5, 0.5, 0.1],
};

let ctx = null;
let current = null; // {name, nodes, timer}
let wanted = null;

export const toneState = { playing: null, wanted: null, audio: "none" };

function context() {
  if (!ctx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    ctx = new Ctx();
    ctx.onstatechange = () => { toneState.audio = ctx.state; if (ctx.state === "running" && wanted && !current) play(wanted); };
  }
  toneState.audio = ctx.state;
  return ctx;
}

function unlock() {
  const c = context();
  if (c && c.state === "suspended") c.resume().catch(() => {});
}
for (const ev of ["pointerdown", "keydown"]) document.addEventListener(ev, unlock, { capture: true });

function burst(c, freqs, on, gainValue) {
  const gain = c.createGain();
  gain.gain.value = 0;
  gain.connect(c.destination);
  const now = c.currentTime;
  gain.gain.setValueAtTime(0, now);
  gain.gain.linearRampToValueAtTime(gainValue, now + 0.02);
  gain.gain.setValueAtTime(gainValue, now + on - 0.02);
  gain.gain.linearRampToValueAtTime(0, now + on);
  const oscs = freqs.map((f) => {
    const o = c.createOscillator();
    o.frequency.value = f;
    o.connect(gain);
    o.start(now);
    o.stop(now + on);
    return o;
  });
  return { gain, oscs };
}

export function play(name) {
  stop();
  wanted = name;
  toneState.wanted = name;
  const c = context();
  if (!c) return;
  if (c.state !== "running") { c.resume().catch(() => {}); return; } // starts on the first gesture
  const [freqs, on, off, gainValue] = PATTERNS[name];
  const cycle = () => { if (current) current.nodes = burst(c, freqs, on, gainValue); };
  current = { name, nodes: null, timer: setInterval(cycle, (on + off) * 1000) };
  cycle();
  toneState.playing = name;
}

export function stop() {
  wanted = null;
  toneState.wanted = null;
  toneState.playing = null;
  if (!current) return;
  clearInterval(current.timer);
  if (current.nodes) for (const o of current.nodes.oscs) { try { o.stop(); } catch { /* already stopped */ } }
  current = null;
}
