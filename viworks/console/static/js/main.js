// The console's shell: login gate, navigation, live indicator, and the page for the route.
import { isAdmin, logout, me, restoreSession } from "./api.js";
import { computed, effect, html, render, signal } from "./lib.js";
import { liveState, startLive, stopLive } from "./live.js";
import { Agent } from "./pages/agent.js";
import { Agents } from "./pages/agents.js";
import { Audit } from "./pages/audit.js";
import { Command } from "./pages/command.js";
import { Fleet } from "./pages/fleet.js";
import { Job, Jobs, NewJob } from "./pages/jobs.js";
import { Login } from "./pages/login.js";
import { Run } from "./pages/run.js";
import { Tokens } from "./pages/tokens.js";
import { route } from "./router.js";
import { ErrorText } from "./ui.js";

const NAV = [
  ["fleet", "Fleet"],
  ["agents", "Agents"],
  ["jobs", "Jobs"],
  ["audit", "Audit"],
  ["tokens", "Tokens", isAdmin],
];

function page([top, id, sub, more]) {
  switch (top) {
    case "fleet":
      return html`<${Fleet} />`;
    case "agents":
      if (!id) return html`<${Agents} />`;
      if (sub === "run" && more) return html`<${Run} key=${id + "/" + more} agentId=${id} verb=${more} />`;
      return html`<${Agent} key=${id} agentId=${id} />`;
    case "commands":
      return html`<${Command} key=${id} commandId=${id} />`;
    case "jobs":
      if (id === "new") return html`<${NewJob} />`;
      return id ? html`<${Job} key=${id} jobId=${id} />` : html`<${Jobs} />`;
    case "audit":
      return html`<${Audit} />`;
    case "tokens":
      return html`<${Tokens} />`;
    default:
      return html`<section class="page"><h1>Not found</h1><p><a href="#/agents">Agents</a></p></section>`;
  }
}

const LIVE = { live: ["● live", "Live: changes show as they happen"], connecting: ["◌ reconnecting", "The live stream is reconnecting"], off: ["○ not live", "No live stream: showing what was loaded"] };

function Shell() {
  const session = me.value;
  const [label, title] = LIVE[liveState.value];
  const current = route.value.parts[0] || "agents";
  return html`<header class="top">
      <a class="brand" href="#/fleet">ViWorkS</a>
      <nav class="main">${NAV.filter(([, , show]) => !show || show()).map(
        ([name, text]) => html`<a href=${"#/" + name} class=${current === name ? "active" : ""}>${text}</a>`,
      )}</nav>
      <span class=${"live live-" + liveState.value} title=${title}>${label}</span>
      <span class="who" title=${`session until ${session.expires_at}`}>${session.name} · ${session.role}</span>
      <button type="button" class="small" onClick=${() => logout().catch(() => undefined)}>Log out</button>
    </header>
    <main>${page(route.value.parts.length ? route.value.parts : ["agents"])}</main>`;
}

// Logged in already (a session cookie from before a reload)?
const startError = signal(null);
restoreSession().catch((e) => (startError.value = e));

function App() {
  const session = me.value;
  if (startError.value) {
    return html`<main class="login"><${ErrorText} error=${startError.value} />
      <p><button type="button" onClick=${() => location.reload()}>Try again</button></p></main>`;
  }
  if (session === undefined) return html`<p class="muted">Loading…</p>`;
  return session === null ? html`<${Login} />` : html`<${Shell} />`;
}

// The live stream runs while logged in.
const loggedIn = computed(() => !!me.value);
effect(() => {
  if (loggedIn.value) startLive();
  else stopLive();
});

document.getElementById("app").textContent = "";
render(html`<${App} />`, document.getElementById("app"));
