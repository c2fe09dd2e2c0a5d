// Run: one verb on one agent, from a form generated from the verb's schema.
import { api, ApiError, mayRun, me, newKey } from "../api.js";
import { argWords, viworks } from "../cli.js";
import { clearSecrets, publicArgs, readArgs, SchemaFields, typedArgs } from "../forms.js";
import { html, useMemo, useRef, useSignal } from "../lib.js";
import { link } from "../router.js";
import { Cli, Confirm, ErrorText, Status, useAsync, useLive } from "../ui.js";
import { CommandView } from "./command.js";

// Arguments to pre-fill the next Run page with ("again with these arguments"), never secrets.
let prefill = null;
export function rerun(args, params) {
  prefill = publicArgs(args, params);
}

/** POST a command; a network failure is retried once with the same Idempotency-Key,
 * so it cannot run twice. */
async function submitCommand(agentId, body) {
  const key = newKey();
  const post = () => api("POST", `agents/${encodeURIComponent(agentId)}/commands`, body, { idempotencyKey: key });
  try {
    return await post();
  } catch (e) {
    if (e instanceof ApiError && e.status === 0) return post();
    throw e;
  }
}

export function Run({ agentId, verb }) {
  const id = encodeURIComponent(agentId);
  const [agentState] = useAsync(() => api("GET", `agents/${id}`), [agentId]);
  const [verbsState] = useAsync(() => api("GET", `agents/${id}/verbs`), [agentId]);
  const initial = useMemo(() => {
    const values = prefill || {};
    prefill = null;
    return values;
  }, [agentId, verb]);
  const commandId = useSignal(null);
  const errors = useSignal({});
  const error = useSignal(null);
  const confirming = useSignal(false);
  const busy = useSignal(false);
  const preview = useSignal([]);
  const live = useSignal(null);
  const form = useRef(null);
  useLive(["agent.online", "agent.offline"], (e, type) => {
    if (e.agent_id === agentId) live.value = type === "agent.online" ? "online" : "offline";
  });

  const agent = agentState.data;
  const spec = verbsState.data?.verbs?.[verb];
  const params = spec?.params || {};
  const status = live.value || agent?.status;

  function check() {
    const { errors: found } = readArgs(form.current, params);
    errors.value = found;
    return !Object.keys(found).length;
  }

  async function send() {
    confirming.value = false;
    const { args, errors: found } = readArgs(form.current, params);
    errors.value = found;
    if (Object.keys(found).length) return;
    const options = Object.fromEntries(
      ["timeout", "ttl"].map((k) => [k, form.current.querySelector(`[name=option-${k}]`).value]).filter(([, v]) => v !== "").map(([k, v]) => [k, Number(v)]),
    );
    clearSecrets(form.current); // secrets leave the page with this request, and only there
    busy.value = true;
    error.value = null;
    try {
      const command = await submitCommand(agentId, { verb, args, ...options });
      commandId.value = command.command_id;
    } catch (e) {
      error.value = e;
      if (e.field) errors.value = { [e.field]: e.message };
    } finally {
      busy.value = false;
    }
  }

  function onSubmit(e) {
    e.preventDefault();
    if (!check()) return;
    // Verbs that change state ask first (an agent that does not say is asked about too).
    if (spec.changes_state !== false) confirming.value = true;
    else send();
  }

  const allowed = agent && mayRun(verb, agent.site);
  return html`<section class="page run-page">
    <p class="crumbs"><a href=${link(["agents"])}>Agents</a> › <a href=${link(["agents", agentId])}>${agentId}</a> › verb</p>
    <${ErrorText} error=${agentState.error || verbsState.error} />
    ${verbsState.data && !spec && html`<p class="error">${agentId} does not offer the verb ${verb}.</p>`}
    ${spec && agent && html`
      <h1 class="verb-title">${verb}</h1>
      <p>${spec.description} ${spec.changes_state !== false && html`<span class="tag warn">changes state</span>`}</p>
      <p>Agent <a href=${link(["agents", agentId])}>${agentId}</a> <${Status} value=${status} />
        ${status === "offline" && html` <span class="muted">the command will wait in the queue until the agent connects, up to its TTL.</span>`}</p>
      <form ref=${form} class="card verb-form" noValidate onSubmit=${onSubmit}
        onInput=${() => (preview.value = argWords(typedArgs(form.current, params), params))}>
        <${SchemaFields} params=${params} initial=${initial} errors=${errors.value} />
        <details class="options"><summary>Options</summary>
          <div class="field"><label for="option-timeout">timeout (seconds)</label>
            <input id="option-timeout" name="option-timeout" type="number" min="1" max="86400" step="any" placeholder="the verb's own" /></div>
          <div class="field"><label for="option-ttl">ttl (seconds a queued command may wait)</label>
            <input id="option-ttl" name="option-ttl" type="number" min="1" max="604800" step="any" placeholder="the backend's default" /></div>
        </details>
        ${allowed
          ? !confirming.value && html`<button type="submit" class="primary" disabled=${busy.value}>Run</button>`
          : html`<p class="muted">Your token (${me.value.role}) may not start ${verb} on ${agentId}.</p>`}
        ${confirming.value && html`<${Confirm} message=${`${verb} changes state on ${agentId}. Go ahead?`} label="Confirm" onConfirm=${send} onCancel=${() => (confirming.value = false)} />`}
      </form>
      <${ErrorText} error=${error.value} />
      ${!commandId.value && html`<${Cli} command=${viworks("run", agentId, verb, ...(preview.value.length ? preview.value : argWords(initial, params)))} />`}
      ${commandId.value && html`<${CommandView} key=${commandId.value} commandId=${commandId.value} compact=${true} params=${params} />`}`}
  </section>`;
}
