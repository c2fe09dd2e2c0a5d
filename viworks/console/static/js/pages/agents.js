// Agents: a live, server-side paged table, filtered with the selector syntax.
import { api, query } from "../api.js";
import { viworks } from "../cli.js";
import { html, useSignal } from "../lib.js";
import { link, route, setQuery } from "../router.js";
import { Cli, ErrorText, Pager, Status, Time, useAsync, useLive, useSoon } from "../ui.js";

const PAGE = 50;

export function Agents() {
  const q = route.value.query;
  const selector = q.get("selector") || "";
  const status = q.get("status") || "";
  const offset = Number(q.get("offset") || 0);
  const draft = useSignal(selector);
  const [state, reload] = useAsync(
    () => api("GET", "agents" + query({ selector, status, limit: PAGE, offset })),
    [selector, status, offset],
  );
  // Live rows: a status change of a row shown is applied at once; the page (new agents,
  // the counts) is re-read at once too, then at most every 500 ms during a storm.
  const live = useSignal({});
  const soon = useSoon(reload, 500);
  useLive(["agent.online", "agent.offline"], (event, type) => {
    live.value = { ...live.value, [event.agent_id]: type === "agent.online" ? "online" : "offline" };
    soon();
  });
  useLive(["resync"], reload);

  const data = state.data;
  const apply = (params) => {
    live.value = {};
    setQuery({ selector, status, ...params });
  };
  return html`<section class="page agents">
    <h1>Agents</h1>
    <form class="filters" onSubmit=${(e) => {
      e.preventDefault();
      apply({ selector: draft.value.trim(), offset: 0 });
    }}>
      <label for="agents-selector">Selector</label>
      <input id="agents-selector" type="search" spellcheck="false" placeholder="site=prod,role=edge|core"
        value=${draft.value} onInput=${(e) => (draft.value = e.target.value)} />
      <label for="agents-status">State</label>
      <select id="agents-status" value=${status} onChange=${(e) => apply({ status: e.target.value, offset: 0 })}>
        <option value="">all</option>
        <option value="online">connected</option>
        <option value="offline">disconnected</option>
      </select>
      <button type="submit">Filter</button>
    </form>
    <${ErrorText} error=${state.error} />
    ${data && html`<p class="summary" aria-live="polite">
        <strong>${data.total.toLocaleString()}</strong> ${selector || status ? "matching" : "agents"},${" "}
        <strong>${data.online.toLocaleString()}</strong> connected</p>
      <table class="list">
        <thead><tr><th>Agent</th><th>Status</th><th>Site</th><th>Version</th><th>Host</th><th>Labels</th><th>Last seen</th></tr></thead>
        <tbody>
          ${data.agents.map((a) => html`<${Row} key=${a.agent_id} agent=${a} status=${live.value[a.agent_id] || a.status} />`)}
        </tbody>
      </table>
      ${!data.agents.length && html`<p class="muted">No agent matches.</p>`}
      <${Pager} offset=${offset} limit=${PAGE} total=${data.total} onPage=${(o) => apply({ offset: o })} />`}
    ${state.loading && html`<p class="muted">Loading…</p>`}
    <${Cli} command=${viworks("agents", selector && "--selector", selector || null)} />
  </section>`;
}

function Row({ agent, status }) {
  return html`<tr data-agent=${agent.agent_id}>
    <td><a href=${link(["agents", agent.agent_id])}>${agent.agent_id}</a></td>
    <td><${Status} value=${status} /></td>
    <td>${agent.site}</td>
    <td>${agent.version}</td>
    <td class="muted">${agent.hostname}</td>
    <td>${Object.entries(agent.labels || {}).map(([k, v]) => html`<span class="tag">${k}=${v}</span> `)}</td>
    <td><${Time} at=${agent.last_seen} /></td>
  </tr>`;
}
