// Fleet: connected/disconnected by site and version, connections as they happen,
// recent failed commands, certificates nearing their end.
import { api } from "../api.js";
import { viworks } from "../cli.js";
import { html, useSignal } from "../lib.js";
import { link } from "../router.js";
import { Cli, ErrorText, Status, Time, useAsync, useLive, useSoon } from "../ui.js";

const FAILED = new Set(["failed", "timed_out", "lost", "rejected", "expired"]);

export function Fleet() {
  const [state, reload] = useAsync(() => api("GET", "fleet"), []);
  const feed = useSignal([]);
  const soon = useSoon(reload, 1000);
  useLive(["agent.online", "agent.offline"], (event, type) => {
    const entry = { ...event, type, at: new Date().toISOString() };
    feed.value = [entry, ...feed.value].slice(0, 50);
    soon();
  });
  useLive(["command.status"], (event) => FAILED.has(event.status) && soon());
  useLive(["resync"], reload);
  const fleet = state.data;
  return html`<section class="page fleet">
    <h1>Fleet</h1>
    <${ErrorText} error=${state.error} />
    ${state.loading && html`<p class="muted">Loading…</p>`}
    ${fleet && html`<div class="cards">
        <div class="card big"><span>${fleet.agents.toLocaleString()}</span> agents</div>
        <div class="card big ok"><span>${fleet.online.toLocaleString()}</span> connected</div>
        <div class="card big ${fleet.agents - fleet.online ? "warn" : ""}"><span>${(fleet.agents - fleet.online).toLocaleString()}</span> disconnected</div>
        <div class="card big ${fleet.certificates.length ? "warn" : ""}"><span>${fleet.certificates.length}</span> certificates ending within 30 days</div>
      </div>
      <div class="columns">
        <${Breakdown} title="By site" rows=${fleet.sites} field="site" />
        <${Breakdown} title="By version" rows=${fleet.versions} field="version" />
      </div>
      <div class="columns">
        <section>
          <h2>Connections, live</h2>
          ${feed.value.length ? html`<ul class="feed">${feed.value.map(
            (e) => html`<li><${Time} at=${e.at} /> <a href=${link(["agents", e.agent_id])}>${e.agent_id}</a>
              ${e.type === "agent.online" ? " connected" : ` dropped${e.reason ? ` (${e.reason})` : ""}`}</li>`,
          )}</ul>` : html`<p class="muted">Agents connecting and dropping show here as it happens.</p>`}
        </section>
        <section>
          <h2>Recent failed commands</h2>
          ${fleet.failed_commands.length ? html`<table class="list"><tbody>${fleet.failed_commands.map(
            (c) => html`<tr><td><a href=${link(["commands", c.command_id])}>${c.verb}</a></td>
              <td><a href=${link(["agents", c.agent_id])}>${c.agent_id}</a></td>
              <td><${Status} value=${c.status} /></td><td class="muted">${c.error?.code || ""}</td>
              <td><${Time} at=${c.finished_at || c.created_at} /></td></tr>`,
          )}</tbody></table>` : html`<p class="muted">None.</p>`}
        </section>
      </div>
      ${fleet.certificates.length > 0 && html`<section>
        <h2>Certificates nearing their end</h2>
        <table class="list"><thead><tr><th>Agent</th><th>Serial</th><th>Valid until</th></tr></thead><tbody>
        ${fleet.certificates.map((c) => html`<tr><td><a href=${link(["agents", c.agent_id])}>${c.agent_id}</a></td>
          <td class="mono">${c.serial}</td><td><${Time} at=${c.not_after} /></td></tr>`)}
        </tbody></table>
        <p class="muted">Re-enrol with <code>viworks pki agent DIR AGENT_ID</code> before they end.</p>
      </section>`}
      <p class="muted">Backend ${fleet.backend.version}: ${fleet.backend.agents_online} live agent links on this replica.</p>`}
    <${Cli} command=${viworks("agents", "--watch")} />
  </section>`;
}

function Breakdown({ title, rows, field }) {
  return html`<section>
    <h2>${title}</h2>
    <table class="list">
      <thead><tr><th>${field}</th><th>connected</th><th>disconnected</th></tr></thead>
      <tbody>${rows.map((r) => html`<tr>
        <td>${field === "site" && r.site !== "None" ? html`<a href=${link(["agents"], { selector: `site=${r.site}` })}>${r.site}</a>` : r[field]}</td>
        <td>${r.online.toLocaleString()}</td><td class=${r.offline ? "warn" : ""}>${r.offline.toLocaleString()}</td></tr>`)}</tbody>
    </table>
  </section>`;
}
