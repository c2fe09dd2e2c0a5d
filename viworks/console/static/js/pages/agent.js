// Agent: its verbs and their schemas, telemetry graphs, session, certificate, commands.
import { api, isAdmin, mayRun } from "../api.js";
import { viworks } from "../cli.js";
import { html, useEffect, useMemo, useRef, useSignal } from "../lib.js";
import { link, route } from "../router.js";
import { Cli, Confirm, ErrorText, Status, Time, useAsync, useLive, useSoon } from "../ui.js";

export function Agent({ agentId }) {
  const id = encodeURIComponent(agentId);
  const [state, reload] = useAsync(() => api("GET", `agents/${id}`), [agentId]);
  const [verbs] = useAsync(() => api("GET", `agents/${id}/verbs`), [agentId]);
  const events = useSignal([]);
  useLive(["agent.online", "agent.offline"], (e, type) => {
    if (e.agent_id !== agentId) return;
    events.value = [{ type, at: new Date().toISOString(), reason: e.reason }, ...events.value].slice(0, 20);
    reload();
  });
  useLive(["resync"], reload);
  const tab = route.value.query.get("tab") || "overview";
  const agent = state.data;
  return html`<section class="page agent-page">
    <p class="crumbs"><a href=${link(["agents"])}>Agents</a> › agent</p>
    <${ErrorText} error=${state.error} />
    ${agent && html`
      <h1>${agent.agent_id} <${Status} value=${agent.status} /></h1>
      <p class="muted">site ${agent.site} · version ${agent.version} · host ${agent.hostname} · protocol ${agent.protocol}
        · signatures ${agent.signing === "on" ? "verified" : "not verified"}
        ${Object.entries(agent.labels || {}).map(([k, v]) => html` <span class="tag">${k}=${v}</span>`)}</p>
      <nav class="tabs">
        <a href=${link(["agents", agentId])} class=${tab === "overview" ? "active" : ""}>Overview</a>
        <a href=${link(["agents", agentId], { tab: "commands" })} class=${tab === "commands" ? "active" : ""}>Commands</a>
      </nav>
      ${tab === "commands"
        ? html`<${AgentCommands} agentId=${agentId} />`
        : html`<div class="columns">
            <section>
              <h2>Verbs</h2>
              <${ErrorText} error=${verbs.error} />
              ${verbs.data && html`<${VerbList} agent=${agent} verbs=${verbs.data.verbs} />`}
            </section>
            <section>
              <h2>Telemetry</h2>
              <${Telemetry} agentId=${agentId} />
              <h2>Session</h2>
              <dl class="facts">
                <dt>Connected</dt><dd><${Time} at=${agent.connected_at} /></dd>
                <dt>Last seen</dt><dd><${Time} at=${agent.last_seen} /></dd>
                <dt>Peer</dt><dd class="mono">${agent.peer}</dd>
                <dt>Sessions</dt><dd>${agent.sessions} since it first connected</dd>
              </dl>
              ${events.value.length > 0 && html`<ul class="feed">${events.value.map(
                (e) => html`<li><${Time} at=${e.at} /> ${e.type === "agent.online" ? "connected" : `dropped${e.reason ? ` (${e.reason})` : ""}`}</li>`,
              )}</ul>`}
              <h2>Certificate</h2>
              <${Certificate} agent=${agent} onRevoked=${reload} />
            </section>
          </div>`}`}
    ${state.loading && html`<p class="muted">Loading…</p>`}
    <${Cli} command=${viworks("agents", "--selector", `id=${agentId}`, "--json")} />
  </section>`;
}

function VerbList({ agent, verbs }) {
  const names = Object.keys(verbs).sort();
  return html`<ul class="verbs">
    ${names.map((name) => {
      const spec = verbs[name];
      const params = Object.keys(spec.params || {});
      return html`<li>
        <a class="verb" href=${link(["agents", agent.agent_id, "run", name])}>${name}</a>
        ${spec.changes_state !== false && html` <span class="tag warn" title="asks for confirmation">changes state</span>`}
        ${!mayRun(name, agent.site) && html` <span class="tag" title="your token may not start it">view only</span>`}
        <div class="muted">${spec.description}${params.length ? html` <span class="params">(${params.join(", ")})</span>` : ""}</div>
      </li>`;
    })}
  </ul>`;
}

function Certificate({ agent, onRevoked }) {
  const confirming = useSignal(false);
  const outcome = useSignal(null);
  const cert = agent.certificate || {};
  async function revoke() {
    confirming.value = false;
    try {
      const answer = await api("POST", `agents/${encodeURIComponent(agent.agent_id)}/certificate/revoke`, { reason: "revoked from the console" });
      const serials = answer.serials.map((c) => c.serial).join(", ");
      outcome.value = answer.already_revoked ? `Already revoked: ${serials}.` : `Revoked ${serials}: sessions using them are dropped within seconds.`;
      onRevoked();
    } catch (e) {
      outcome.value = e;
    }
  }
  return html`<dl class="facts">
      <dt>Serial</dt><dd class="mono">${cert.serial || "unknown"}</dd>
      <dt>Valid until</dt><dd>${cert.not_after ? html`<${Time} at=${cert.not_after} />` : "unknown"}</dd>
    </dl>
    ${isAdmin() && cert.serial && !confirming.value && html`<button type="button" class="danger" onClick=${() => (confirming.value = true)}>Revoke certificate</button>`}
    ${confirming.value && html`<${Confirm} message=${`Revoke every certificate ${agent.agent_id} has connected with (the last: ${cert.serial})? It cannot reconnect until re-enrolled.`}
      label="Revoke" onConfirm=${revoke} onCancel=${() => (confirming.value = false)} />`}
    ${outcome.value && (typeof outcome.value === "string" ? html`<p>${outcome.value}</p>` : html`<${ErrorText} error=${outcome.value} />`)}
    ${isAdmin() && html`<${Cli} command=${viworks("pki", "revoke", "--config", "backend.toml", agent.agent_id)} />`}`;
}

function AgentCommands({ agentId }) {
  const [state, reload] = useAsync(() => api("GET", `commands?agent_id=${encodeURIComponent(agentId)}&limit=50`), [agentId]);
  const soon = useSoon(reload, 300);
  useLive(["command.status"], (e) => e.agent_id === agentId && soon());
  useLive(["resync"], reload);
  return html`<section>
    <${ErrorText} error=${state.error} />
    ${state.data && html`<table class="list">
      <thead><tr><th>Verb</th><th>Status</th><th>Created</th><th>Finished</th><th>Error</th></tr></thead>
      <tbody>${state.data.commands.map((c) => html`<tr>
        <td><a href=${link(["commands", c.command_id])}>${c.verb}</a></td><td><${Status} value=${c.status} /></td>
        <td><${Time} at=${c.created_at} /></td><td><${Time} at=${c.finished_at} /></td>
        <td class="muted">${c.error ? c.error.code : ""}</td></tr>`)}</tbody>
    </table>
    ${!state.data.commands.length && html`<p class="muted">No commands yet.</p>`}`}
    <${Cli} command=${viworks("commands", "--agent", agentId)} />
  </section>`;
}

// -- telemetry graphs (uPlot, loaded when first needed) ---------------------------------

const SERIES = [
  ["CPU busy %", (m, prev) => cpuPercent(m, prev)],
  ["memory used %", (m) => m.health?.memory?.used_percent],
  ["load (1 min)", (m) => m.health?.load?.["1m"]],
  ["disk / used %", (m) => (m.health?.disk || []).find((d) => d.mount === "/")?.used_percent],
];

function cpuPercent(m, prev) {
  const now = m.health?.cpu?.jiffies;
  const before = prev?.health?.cpu?.jiffies;
  if (!now || !before) return null;
  const total = (j) => Object.values(j).reduce((a, b) => a + b, 0);
  const idle = (j) => (j.idle || 0) + (j.iowait || 0);
  const spent = total(now) - total(before);
  return spent > 0 ? Math.round(1000 * (1 - (idle(now) - idle(before)) / spent)) / 10 : null;
}

function Telemetry({ agentId }) {
  const [state, reload] = useAsync(() => api("GET", `agents/${encodeURIComponent(agentId)}/telemetry/history?limit=240`), [agentId]);
  // Agents report every 30 s by default; no event announces a report, so re-read.
  useEffect(() => {
    const timer = setInterval(reload, 30000);
    return () => clearInterval(timer);
  }, [agentId]);
  // Computed once per answer, so that live re-renders do not redraw the graphs.
  const graphs = useMemo(() => {
    const history = (state.data?.history || []).slice().reverse();
    const times = history.map((t) => new Date(t.at).getTime() / 1000);
    return {
      history,
      times,
      series: SERIES.map(([label, pick]) => [label, history.map((t, i) => pick(t.metrics, history[i - 1]?.metrics) ?? null)]),
    };
  }, [state.data]);
  const { history, times, series } = graphs;
  if (!history.length) return html`<p class="muted">${state.loading ? "Loading…" : "No telemetry reported yet."}</p>`;
  const latest = history[history.length - 1].metrics;
  return html`<div class="graphs">
    ${series.map(([label, values]) => html`<${Graph} key=${label} label=${label} times=${times} values=${values} />`)}
    <p class="muted">Verbs busy: ${latest.verbs?.running ?? "?"}, waiting: ${latest.verbs?.queued ?? "?"}
      ${latest.containers && ` · containers: ${latest.containers.count}`}</p>
  </div>`;
}

let uPlotModule = null;
function loadUPlot() {
  uPlotModule = uPlotModule || import("../../vendor/uplot.mjs").then((m) => m.default);
  return uPlotModule;
}

function Graph({ label, times, values }) {
  const box = useRef(null);
  useEffect(() => {
    let plot = null;
    let gone = false;
    loadUPlot().then((uPlot) => {
      if (gone || !box.current) return;
      plot = new uPlot(
        {
          width: Math.max(240, box.current.clientWidth),
          height: 120,
          legend: { show: false },
          series: [{}, { label, stroke: "#2b6cb0", width: 1.5, fill: "rgba(43,108,176,0.08)" }],
          axes: [{ size: 28 }, { size: 44 }],
        },
        [times, values],
        box.current,
      );
    });
    return () => {
      gone = true;
      if (plot) plot.destroy();
    };
  }, [times, values]);
  const last = values.filter((v) => v !== null).pop();
  return html`<figure class="graph"><figcaption>${label}: <strong>${last ?? "—"}</strong></figcaption>
    ${times.length > 1 ? html`<div ref=${box}></div>` : html`<p class="muted">The graph starts with the next report.</p>`}</figure>`;
}
