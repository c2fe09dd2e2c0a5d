// Audit: the hash-chained log, filtered, paged, exported, with the chain's verification.
import { API, api, query } from "../api.js";
import { viworks } from "../cli.js";
import { html, useSignal } from "../lib.js";
import { route, setQuery } from "../router.js";
import { Cli, ErrorText, localTime, useAsync } from "../ui.js";

const FIELDS = ["actor", "action", "agent", "outcome", "since", "until"];

function epoch(local) {
  return local ? String(new Date(local).getTime() / 1000) : "";
}

export function Audit() {
  const q = route.value.query;
  const filters = Object.fromEntries(FIELDS.map((f) => [f, q.get(f) || ""]));
  const before = q.get("before") || "";
  const params = { ...filters, since: epoch(filters.since), until: epoch(filters.until) };
  const [state, reload] = useAsync(() => api("GET", "audit" + query({ ...params, before, limit: 100 })), [q.toString()]);
  const full = useSignal(false);
  const [chain, recheck] = useAsync(() => api("GET", "audit/verify" + (full.value ? "?full=1" : "")), []);
  const pages = useSignal([]); // the "before" cursors of newer pages, to go back

  function apply(e) {
    e.preventDefault();
    const form = e.currentTarget;
    pages.value = [];
    setQuery(Object.fromEntries(FIELDS.map((f) => [f, form.querySelector(`[name=${f}]`).value.trim()])));
  }
  const records = state.data?.records || [];
  return html`<section class="page audit">
    <h1>Audit log</h1>
    <${Chain} state=${chain} onFull=${() => {
      full.value = true;
      recheck();
    }} />
    <form class="filters" key=${JSON.stringify(filters)} onSubmit=${apply}>
      <label>actor <input name="actor" defaultValue=${filters.actor} placeholder="token name, agent id, system" /></label>
      <label>action <input name="action" defaultValue=${filters.action} placeholder="api.post, command.* …" /></label>
      <label>agent <input name="agent" defaultValue=${filters.agent} /></label>
      <label>outcome <select name="outcome">
        ${["", "ok", "refused", "failed", "succeeded", "timed_out", "rejected", "cancelled", "expired", "lost"].map((o) => html`<option value=${o} selected=${o === filters.outcome}>${o || "any"}</option>`)}
      </select></label>
      <label>from <input name="since" type="datetime-local" defaultValue=${filters.since} /></label>
      <label>to <input name="until" type="datetime-local" defaultValue=${filters.until} /></label>
      <button type="submit">Filter</button>
      <a class="button" href=${API + "audit/export" + query(params)} download="viworks-audit.jsonl">Export (JSON lines)</a>
      <button type="button" onClick=${reload}>Refresh</button>
    </form>
    <${ErrorText} error=${state.error} />
    <table class="list audit-records">
      <thead><tr><th>#</th><th>Time</th><th>Actor</th><th>Action</th><th>Target</th><th>Outcome</th><th>Detail</th></tr></thead>
      <tbody>${records.map((r) => html`<tr>
        <td>${r.seq}</td><td class="nowrap">${localTime(r.at)}</td><td>${r.actor}</td><td>${r.action}</td>
        <td class="mono">${r.target}</td><td class=${"outcome o-" + r.outcome}>${r.outcome}</td>
        <td class="detail">${r.detail ? JSON.stringify(r.detail) : ""}</td></tr>`)}</tbody>
    </table>
    ${state.data && !records.length && html`<p class="muted">No record matches.</p>`}
    <nav class="pager">
      ${before && html`<button type="button" onClick=${() => {
        const back = pages.value.slice(0, -1);
        const previous = pages.value[pages.value.length - 1] || "";
        pages.value = back;
        setQuery({ ...filters, before: previous });
      }}>‹ Newer</button>`}
      ${state.data?.next_before && html`<button type="button" onClick=${() => {
        pages.value = [...pages.value, before];
        setQuery({ ...filters, before: state.data.next_before });
      }}>Older ›</button>`}
    </nav>
    <${Cli} command=${viworks("audit", "export", "--config", "backend.toml", "--output", "audit.jsonl")} />
  </section>`;
}

function Chain({ state, onFull }) {
  const status = state.data;
  if (state.error) return html`<${ErrorText} error=${state.error} />`;
  if (!status) return html`<p class="badge">checking the chain…</p>`;
  return html`<p class=${"badge " + (status.verified ? "ok" : "bad")} title=${`checked ${localTime(status.checked_at)}`}>
    ${status.verified
      ? `chain verified to record ${status.verified_to}`
      : `chain BROKEN at record ${status.broken_at}: ${status.message} (verified to record ${status.verified_to})`}
    <button type="button" class="small" onClick=${onFull}>Verify from the start</button>
  </p>
  <${Cli} command=${viworks("audit", "verify", "--config", "backend.toml")} />`;
}
