// Small shared pieces: statuses, times, the CLI line, errors, data loading, live updates.
import { html, signal, useEffect, useRef, useState } from "./lib.js";
import { onLive } from "./live.js";

// What each status means, shown on hover (and spelled out on the command page).
export const MEANING = {
  queued: "Waiting for delivery: the agent is offline or the command was just made. It is sent when the agent connects, until it expires.",
  dispatched: "Sent to the agent over its link, not acknowledged yet.",
  running: "The agent acknowledged it and is running it.",
  succeeded: "The verb ran and reported success.",
  failed: "The verb ran and reported a failure: see its error and output.",
  timed_out: "The verb ran past its timeout and was stopped.",
  rejected: "The agent refused it before running anything (arguments, signature, or too late).",
  cancelled: "Cancelled by an operator before it finished.",
  expired: "Never delivered: the agent did not connect before the command's TTL ran out. It did not run.",
  lost: "Delivered, but no result came back within its timeout and grace: it may or may not have run.",
  pending: "Not started yet (the job starts it when concurrency allows).",
  online: "The agent holds a live link to this backend.",
  offline: "No live link: commands for it wait in the queue until it reconnects.",
  paused: "The job starts no new agents until resumed (after its canary, or paused by an operator).",
  stopped: "The job hit max_errors: no new agents are started.",
  completed: "Every target of the job has an outcome.",
};
export const FINAL = new Set(["succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost"]);

export function Status({ value }) {
  return html`<span class=${"status s-" + value} title=${MEANING[value] || ""}>${value}</span>`;
}

// Relative times tick every 5 s.
const now = signal(Date.now());
setInterval(() => {
  now.value = Date.now();
}, 5000);

export function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function ago(iso) {
  if (!iso) return "never";
  now.value; // re-rendered by the tick
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Math.abs(seconds) < 2) return "just now";
  const future = seconds < 0;
  const s = Math.abs(seconds);
  const text =
    s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min` : s < 172800 ? `${Math.floor(s / 3600)} h` : `${Math.floor(s / 86400)} days`;
  return future ? `in ${text}` : `${text} ago`;
}

export function Time({ at }) {
  if (!at) return html`<span class="muted">—</span>`;
  return html`<time datetime=${at} title=${localTime(at)}>${ago(at)}</time>`;
}

/** The equivalent viworks command, in a read-only field (select it to copy). */
export function Cli({ command }) {
  const copy = (e) => navigator.clipboard.writeText(command).then(() => (e.target.textContent = "Copied"));
  return html`<div class="cli">
    <input class="cli-text" readonly value=${"$ " + command} aria-label="equivalent viworks command"
      onFocus=${(e) => e.target.select()} />
    ${navigator.clipboard && html`<button type="button" class="small" onClick=${copy}>Copy</button>`}
  </div>`;
}

export function ErrorText({ error }) {
  if (!error) return null;
  const text = typeof error === "string" ? error : `${error.message}${error.code && error.status ? ` (${error.code})` : ""}`;
  return html`<p class="error" role="alert">${text}</p>`;
}

/** ``[state, reload]``: ``load()``'s result as ``{data, error, loading}``; a reload keeps
 * the data shown until the new answer arrives, and older answers never win. */
export function useAsync(load, deps) {
  const [state, setState] = useState({ loading: true });
  const latest = useRef(load);
  latest.current = load;
  const seq = useRef(0);
  const reload = async () => {
    const mine = ++seq.current;
    try {
      const data = await latest.current();
      if (mine === seq.current) setState({ data });
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ data: s.data, error }));
    }
  };
  useEffect(() => {
    setState({ loading: true });
    reload();
  }, deps);
  return [state, reload];
}

/** Call ``fn(data, type)`` for live events of ``types`` while the component is shown. */
export function useLive(types, fn) {
  const latest = useRef(fn);
  latest.current = fn;
  useEffect(() => onLive(types, (data, type) => latest.current(data, type)), [types.join()]);
}

/** A throttled ``fn``: called when idle it runs at once; calls within ``interval`` ms of
 * a run make one more run at the end of it (a burst of live events, one reload). */
export function useSoon(fn, interval) {
  const latest = useRef(fn);
  latest.current = fn;
  const state = useRef({ last: 0, timer: null });
  useEffect(() => () => clearTimeout(state.current.timer), []);
  return () => {
    const s = state.current;
    if (s.timer !== null) return;
    const wait = s.last + interval - Date.now();
    const run = () => {
      s.timer = null;
      s.last = Date.now();
      latest.current();
    };
    if (wait <= 0) run();
    else s.timer = setTimeout(run, wait);
  };
}

/** ``fn`` once calls stop coming for ``delay`` ms (typing). */
export function useDebounced(fn, delay) {
  const latest = useRef(fn);
  latest.current = fn;
  const timer = useRef(null);
  useEffect(() => () => clearTimeout(timer.current), []);
  return () => {
    clearTimeout(timer.current);
    timer.current = setTimeout(() => latest.current(), delay);
  };
}

/** An inline confirmation: what will happen, and two buttons. */
export function Confirm({ message, label = "Confirm", onConfirm, onCancel }) {
  return html`<div class="confirm" role="alertdialog" aria-label="confirmation">
    <p>${message}</p>
    <button type="button" class="danger" onClick=${onConfirm}>${label}</button>
    <button type="button" onClick=${onCancel}>Back</button>
  </div>`;
}

// Order of the segments of a progress bar.
const PROGRESS = ["succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost", "running", "dispatched", "queued", "pending"];

export function Progress({ counts, total }) {
  const all = total || Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  return html`<div class="progress" role="img" aria-label=${PROGRESS.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(", ")}>
    ${PROGRESS.filter((s) => counts[s]).map(
      (s) => html`<span class=${"bar s-" + s} style=${{ width: (100 * counts[s]) / all + "%" }} title=${`${counts[s]} ${s}`}></span>`,
    )}
  </div>`;
}

export function Counts({ counts }) {
  return html`<span class="counts">${PROGRESS.filter((s) => counts[s]).map(
    (s) => html`<span class=${"count s-" + s} title=${MEANING[s] || ""}>${counts[s]} ${s}</span> `,
  )}</span>`;
}

export function Pager({ offset, limit, total, onPage }) {
  if (total <= limit) return null;
  const last = Math.min(offset + limit, total);
  return html`<nav class="pager" aria-label="pages">
    <button type="button" disabled=${offset === 0} onClick=${() => onPage(Math.max(0, offset - limit))}>‹ Previous</button>
    <span>${(offset + 1).toLocaleString()}–${last.toLocaleString()} of ${total.toLocaleString()}</span>
    <button type="button" disabled=${last >= total} onClick=${() => onPage(offset + limit)}>Next ›</button>
  </nav>`;
}

export function Json({ value }) {
  if (value === null || value === undefined) return null;
  return html`<pre class="json">${JSON.stringify(value, null, 2)}</pre>`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "";
}
