// Home page: the privacy switch, and notification permission for incoming calls.
import { init as initPage } from "./page.js";

export function init() {
  initPage();
  // A per-browser privacy preference that the call page reads (iceTransportPolicy "relay").
  const forceRelay = document.getElementById("force-relay");
  forceRelay.checked = localStorage.getItem("traverse.forceRelay") === "1";
  forceRelay.addEventListener("change", () => localStorage.setItem("traverse.forceRelay", forceRelay.checked ? "1" : "0"));

  const notify = document.getElementById("allow-notifications");
  if (!("Notification" in window) || Notification.permission !== "default") notify.hidden = true;
  notify.addEventListener("click", async () => {
    await Notification.requestPermission();
    notify.hidden = true;
  });
}

init();
