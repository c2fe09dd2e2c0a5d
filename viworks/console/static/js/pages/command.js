// Command: live output, the status timeline with what each state means, cancel, again.
import { API, api, mayRun } from "../api.js";
import { argWords, viworks } from "../cli.js";
import { html, useEffect, useRef, useSignal } from "../lib.js";
import { go, link } from "../router.js";
import { Cli, Confirm, ErrorText, FINAL, Json, localTime, MEANING, Status, Time, useAsync, useLive } from "../ui.js";
import { rerun } from "./run.js";

/** Output chunks as they arrive: the follow stream replays what was stored, then
 * streams until the command is final (resuming after a drop with Last-Event-ID). */
function useOutput(commandId, final, onFinal) {
  const chunks = useSignal([]);
  const done = useRef(onFinal);
  done.current = onFinal;
  useEffect(() => {
    chunks.value = [];
    if (final) return undefined;
    let last = -1;
    const source = new EventSource(`${API}commands/${encodeURIComponent(commandId)}/output?follow=1`);
    source.addEventListener("command.output", (e) => {
      const chunk = JSON.parse(e.data);
      if (chunk.seq > last) {
        last = chunk.seq;
        chunks.value = [...chunks.value, chunk];
      }
    });
    source.addEventListener("command.status", () => {
      source.close();
      done.current();
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) done.current();
    });
    return () => source.close();
  }, [commandId, final]);
  return chunks.value;
}

function Output({ command, chunks }) {
  const parts = FINAL.has(command.status)
    ? [
        ...(command.stdout ? [{ stream: "stdout", data: command.stdout }] : []),
        ...(command.stderr ? [{ stream: "stderr", data: command.stderr }] : []),
      ]
    : chunks;
  const truncated = command.stdout_truncated || command.stderr_truncated;
  if (!parts.length) return html`<p class="muted">${FINAL.has(command.status) ? "No output." : "No output yet."}</p>`;
  return html`<pre class="output" aria-label="output">${parts.map((c) => html`<span class=${c.stream}>${c.data}</span>`)}</pre>
    ${truncated && html`<p class="muted">Output was truncated by the agent's limit.</p>`}`;
}

/** A command as it stands and as it changes. ``compact`` leaves out the timeline. */
export function CommandView({ commandId, compact = false, params }) {
  const [state, reload] = useAsync(() => api("GET", `commands/${encodeURIComponent(commandId)}`), [commandId]);
  const command = state.data;
  const final = !!command && FINAL.has(command.status);
  const chunks = useOutput(commandId, !command || final, reload);
  useLive(["command.status"], (event) => event.command_id === commandId && reload());
  useLive(["resync"], reload);
  const confirming = useSignal(false);
  const actionError = useSignal(null);
  if (!command) return html`<${ErrorText} error=${state.error} />${state.loading && html`<p class="muted">Loading…</p>`}`;

  async function cancel() {
    confirming.value = false;
    try {
      await api("POST", `commands/${encodeURIComponent(commandId)}/cancel`);
      reload();
    } catch (e) {
      actionError.value = e;
    }
  }
  const allowed = mayRun(command.verb);
  return html`<div class="command" data-command=${command.command_id}>
    <dl class="facts">
      <dt>Status</dt><dd><${Status} value=${command.status} /></dd>
      ${command.exit_code !== null && html`<dt>Exit code</dt><dd>${command.exit_code}</dd>`}
      ${command.error && html`<dt>Error</dt><dd class="error">${command.error.code}: ${command.error.message}</dd>`}
      <dt>Created</dt><dd><${Time} at=${command.created_at} /></dd>
      ${command.finished_at && html`<dt>Finished</dt><dd><${Time} at=${command.finished_at} /></dd>`}
      ${command.status === "queued" && html`<dt>Expires</dt><dd><${Time} at=${command.expires_at} /></dd>`}
    </dl>
    ${!final && html`<p class="explain">${MEANING[command.status]}</p>`}
    <h3>Output</h3>
    <${Output} command=${command} chunks=${chunks} />
    ${command.result !== null && html`<h3>Result</h3><${Json} value=${command.result} />`}
    <${ErrorText} error=${actionError.value} />
    ${!final && allowed && !confirming.value && html`<button type="button" class="danger" onClick=${() => (confirming.value = true)}>Cancel command</button>`}
    ${confirming.value && html`<${Confirm} message=${`Cancel ${command.verb} on ${command.agent_id}? A running verb is stopped by its agent.`}
        label="Cancel it" onConfirm=${cancel} onCancel=${() => (confirming.value = false)} />`}
    ${compact
      ? html`<p><a href=${link(["commands", command.command_id])}>Details and history of this command ›</a></p>
          <${Cli} command=${viworks("run", command.agent_id, command.verb, ...argWords(command.args, params))} />`
      : html`<${Timeline} command=${command} />`}
  </div>`;
}

function Timeline({ command }) {
  const events = command.events || [];
  return html`<h3>History</h3>
    <ol class="timeline">
      ${events.map((e) => html`<li>
        <${Status} value=${e.status} /> <span class="muted when">${localTime(e.at)}</span>
        <span class="explain">${MEANING[e.status] || ""}</span>
        ${e.detail && html`<span class="muted"> ${typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)}</span>`}
      </li>`)}
    </ol>`;
}

export function Command({ commandId }) {
  const [state] = useAsync(() => api("GET", `commands/${encodeURIComponent(commandId)}`), [commandId]);
  const command = state.data;
  const [verbs] = useAsync(() => (command ? api("GET", `agents/${encodeURIComponent(command.agent_id)}/verbs`) : null), [command?.agent_id]);
  const params = verbs.data?.verbs?.[command?.verb]?.params;
  return html`<section class="page command-page">
    <p class="crumbs"><a href=${link(["agents"])}>Agents</a>${" › "}${command && html`<a href=${link(["agents", command.agent_id])}>${command.agent_id}</a>${" › "}`}command ${commandId.slice(0, 8)}</p>
    ${command && html`<h1>${command.verb} <span class="muted">on</span> ${command.agent_id}</h1>
      <p class="muted mono">${command.command_id}</p>
      ${Object.keys(command.args || {}).length > 0 && html`<h3>Arguments</h3><${Json} value=${command.args} />`}
      ${mayRun(command.verb) && html`<p><button type="button" onClick=${() => {
        rerun(command.args, params);
        go(["agents", command.agent_id, "run", command.verb]);
      }}>Again with these arguments</button></p>`}`}
    <${ErrorText} error=${state.error} />
    <${CommandView} commandId=${commandId} params=${params} />
    ${command && html`<${Cli} command=${viworks("commands", "--agent", command.agent_id, "--json")} />`}
  </section>`;
}
