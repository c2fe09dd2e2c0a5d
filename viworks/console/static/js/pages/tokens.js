// Tokens (admin): create with role, verbs, sites and expiry (the secret shown once),
// list, revoke.
import { api, me } from "../api.js";
import { viworks } from "../cli.js";
import { html, useSignal } from "../lib.js";
import { Cli, Confirm, ErrorText, localTime, Time, useAsync } from "../ui.js";

const list = (text) => {
  const items = text.split(",").map((s) => s.trim()).filter(Boolean);
  return items.length ? items : null;
};

export function Tokens() {
  const [state, reload] = useAsync(() => api("GET", "tokens"), []);
  const secret = useSignal(null); // the new token, until dismissed
  const error = useSignal(null);
  const revoking = useSignal(null);
  const draft = useSignal({ name: "", role: "operator", verbs: "", sites: "", expires: "" });

  if (me.value.role !== "admin") return html`<section class="page"><h1>Tokens</h1><p>Only admin tokens manage tokens.</p></section>`;

  async function create(e) {
    e.preventDefault();
    const d = draft.value;
    error.value = null;
    try {
      const body = { name: d.name.trim(), role: d.role, verbs: list(d.verbs), sites: list(d.sites) };
      if (d.expires) body.expires_in = Number(d.expires) * 86400;
      const created = await api("POST", "tokens", body);
      secret.value = { name: created.name, token: created.token };
      draft.value = { name: "", role: "operator", verbs: "", sites: "", expires: "" };
      reload();
    } catch (err) {
      error.value = err;
    }
  }
  async function revoke(name) {
    revoking.value = null;
    try {
      await api("DELETE", `tokens/${encodeURIComponent(name)}`);
      reload();
    } catch (err) {
      error.value = err;
    }
  }
  const d = draft.value;
  const set = (key) => (e) => (draft.value = { ...draft.value, [key]: e.target.value });
  return html`<section class="page tokens">
    <h1>API tokens</h1>
    ${secret.value && html`<div class="card secret" role="alert">
      <p>Token <strong>${secret.value.name}</strong> — copy it now, it is shown only once and stored only as a hash:</p>
      <input class="cli-text" readonly value=${secret.value.token} onFocus=${(e) => e.target.select()} aria-label="the new token" />
      <button type="button" onClick=${() => (secret.value = null)}>I have copied it</button>
    </div>`}
    <form class="card filters" onSubmit=${create}>
      <label>name <input required value=${d.name} onInput=${set("name")} /></label>
      <label>role <select value=${d.role} onChange=${set("role")}>
        <option value="viewer">viewer (reads)</option><option value="operator">operator (runs verbs, jobs)</option><option value="admin">admin (everything)</option>
      </select></label>
      <label>verbs <input value=${d.verbs} onInput=${set("verbs")} placeholder="all (or a,b)" /></label>
      <label>sites <input value=${d.sites} onInput=${set("sites")} placeholder="all (or x,y)" /></label>
      <label>expires in (days) <input type="number" min="1" value=${d.expires} onInput=${set("expires")} placeholder="never" /></label>
      <button type="submit" class="primary">Create token</button>
    </form>
    <${Cli} command=${viworks("token", "create", "--config", "backend.toml", "--name", d.name.trim() || "NAME", "--role", d.role,
      list(d.verbs) && "--verbs", list(d.verbs)?.join(",") ?? null, list(d.sites) && "--sites", list(d.sites)?.join(",") ?? null,
      d.expires && "--expires-in", d.expires ? String(Number(d.expires) * 86400) : null)} />
    <${ErrorText} error=${error.value || state.error} />
    ${revoking.value && html`<${Confirm} message=${`Revoke token ${revoking.value}? Its holders (and their console sessions) lose access within 2 s.`}
      label="Revoke" onConfirm=${() => revoke(revoking.value)} onCancel=${() => (revoking.value = null)} />`}
    ${state.data && html`<table class="list">
      <thead><tr><th>Name</th><th>Role</th><th>State</th><th>Verbs</th><th>Sites</th><th>Expires</th><th>Created</th><th></th></tr></thead>
      <tbody>${state.data.tokens.map((t) => html`<tr>
        <td>${t.name}${t.name === me.value.name && html` <span class="tag" title="revoking it ends this session">this session</span>`}</td><td>${t.role}</td><td class=${"state-" + t.state}>${t.state}</td>
        <td>${t.verbs ? t.verbs.join(", ") : "all"}</td><td>${t.sites ? t.sites.join(", ") : "all"}</td>
        <td>${t.expires_at ? html`<${Time} at=${t.expires_at} />` : "never"}</td><td title=${localTime(t.created_at)}>${localTime(t.created_at)}</td>
        <td>${t.state === "active" && html`<button type="button" class="small danger" onClick=${() => (revoking.value = t.name)}>Revoke</button>`}</td>
      </tr>`)}</tbody></table>`}
    <${Cli} command=${viworks("token", "list", "--config", "backend.toml")} />
  </section>`;
}
