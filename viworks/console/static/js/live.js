// One EventSource for the whole page (GET /api/v1/events, authenticated by the cookie).
// Pages subscribe to event types; "resync" tells them to re-read what they show
// (events were missed: the backend restarted, or the stream was down too long).
import { API, me, restoreSession } from "./api.js";
import { signal } from "./lib.js";

const TYPES = ["agent.online", "agent.offline", "command.status", "job.progress"];
const listeners = new Map();
export const liveState = signal("off"); // "live" | "connecting" | "off"
let source = null;
let retry = null;
let opened = false;

export function onLive(types, fn) {
  for (const type of types) {
    if (!listeners.has(type)) listeners.set(type, new Set());
    listeners.get(type).add(fn);
  }
  return () => types.forEach((type) => listeners.get(type).delete(fn));
}

function dispatch(type, data) {
  for (const fn of listeners.get(type) || []) {
    try {
      fn(data, type);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }
}

export function startLive() {
  stopLive();
  liveState.value = "connecting";
  source = new EventSource(API + "events?types=agent.*,command.status,job.progress");
  source.addEventListener("open", () => {
    liveState.value = "live";
    // A new stream starts "now": whatever happened while there was none is missed.
    if (opened) dispatch("resync", {});
    opened = true;
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      liveState.value = "connecting"; // the browser reconnects with Last-Event-ID
      return;
    }
    // Refused (401 after logout or expiry, or the backend is down): check, then retry.
    liveState.value = "off";
    source = null;
    retry = setTimeout(async () => {
      try {
        await restoreSession();
      } catch {
        /* the backend is down: try again */
      }
      if (me.value) startLive();
    }, 3000);
  });
  for (const type of TYPES) {
    source.addEventListener(type, (e) => dispatch(type, JSON.parse(e.data)));
  }
  source.addEventListener("events.gap", () => dispatch("resync", {}));
}

export function stopLive() {
  clearTimeout(retry);
  if (source) source.close();
  source = null;
  opened = false;
  liveState.value = "off";
}
