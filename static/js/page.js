// Every signed-in page but the call page: one listening socket (no TURN credentials), the ringer,
// and an online/offline status. Pages with more to do import `page` from here.
import { Signal } from "./signal.js";
import { initRinger } from "./ringer.js";

export const page = { signal: null, ringer: null, welcomes: 0, drops: 0, online: false };

export function init(body = document.body) {
  if (page.signal) return page;
  const signal = (page.signal = new Signal(`${body.dataset.wsPath}?ice=0`));
  const status = () => document.getElementById("conn-status");
  signal
    .on("welcome", () => { page.welcomes += 1; })
    .on("resumed", () => { page.welcomes += 1; })
    .on("*", () => {
      if (!page.online && signal.ready) {
        page.online = true;
        if (status()) status().textContent = "Online: calls to you ring here, and on every page of the site.";
      }
    })
    .on("close", () => {
      page.drops += 1;
      page.online = false;
      if (status()) status().textContent = "Offline: reconnecting…";
    });
  page.ringer = initRinger({ signal, mount: true });
  signal.connect();
  window.traverseHome = page; // the browser tests' hook (and for debugging)
  return page;
}

if (document.body.dataset.wsPath && !document.getElementById("call")) init();
