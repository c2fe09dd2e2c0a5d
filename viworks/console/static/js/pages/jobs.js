// Jobs: one verb fanned out to the agents a selector matches, with canary, concurrency
// and max_errors; live progress, per-target status, pause/resume/cancel, rerun failed.
import { api, isOperator } from "../api.js";
import { argWords, viworks } from "../cli.js";
import { clearSecrets, publicArgs, readArgs, SchemaFields, typedArgs } from "../forms.js";
import { html, useEffect, useMemo, useRef, useSignal } from "../lib.js";
import { go, link } from "../router.js";
import { Cli, Confirm, Counts, ErrorText, Progress, Status, Time, shortId, useAsync, useDebounced, useLive, useSoon } from "../ui.js";

const DONE = new Set(["completed", "cancelled"]);
const BAD = new Set(["failed", "timed_out", "rejected", "cancelled", "expired", "lost"]);

export function Jobs() {
  const [state, reload] = useAsync(() => api("GET", "jobs?limit=100"), []);
  const progress = useSignal({});
  const soon = useSoon(reload, 500);
  useLive(["job.progress"], (e) => {
    progress.value = { ...progress.value, [e.job_id]: e };
    if (!state.data?.jobs.some((j) => j.job_id === e.job_id)) soon();
  });
  useLive(["resync"], reload);
  return html`<section class="page jobs">
    <h1>Jobs</h1>
    ${isOperator() && html`<p><a class="button" href=${link(["jobs", "new"])}>New job</a></p>`}
    <${ErrorText} error=${state.error} />
    ${state.data && html`<table class="list">
      <thead><tr><th>Job</th><th>Verb</th><th>Selector</th><th>Status</th><th>Progress</th><th>By</th><th>Created</th></tr></thead>
      <tbody>${state.data.jobs.map((job) => {
        const live = progress.value[job.job_id];
        const counts = live ? live.counts : job.counts;
        return html`<tr>
          <td><a class="mono" href=${link(["jobs", job.job_id])}>${shortId(job.job_id)}</a></td>
          <td>${job.verb}</td><td class="mono">${job.selector}</td>
          <td><${Status} value=${live ? live.status : job.status} /></td>
          <td><${Progress} counts=${counts} total=${job.targets} /></td>
          <td>${job.created_by}</td><td><${Time} at=${job.created_at} /></td></tr>`;
      })}</tbody></table>
      ${!state.data.jobs.length && html`<p class="muted">No jobs yet.</p>`}`}
    <${Cli} command=${viworks("job", "show", "JOB_ID")} />
  </section>`;
}

// -- a new job ---------------------------------------------------------------------------

let prefill = null;

function amount(text) {
  const value = text.trim();
  return /^\d+$/.test(value) ? Number(value) : value;
}

export function NewJob() {
  const initial = useMemo(() => {
    const values = prefill || {};
    prefill = null;
    return values;
  }, []);
  const selector = useSignal(initial.selector || "");
  const verb = useSignal(initial.verb || "");
  const settings = useSignal({ concurrency: String(initial.concurrency ?? 1), max_errors: String(initial.max_errors ?? 1), canary: "", canary_auto: false, ttl: "", timeout: "" });
  const errors = useSignal({});
  const error = useSignal(null);
  const confirming = useSignal(false);
  const preview = useSignal([]);
  const form = useRef(null);
  const [matched, rematch] = useAsync(
    () => (selector.value.trim() ? api("GET", `agents?selector=${encodeURIComponent(selector.value.trim())}&limit=20&offset=0`) : null),
    [],
  );
  const soon = useDebounced(rematch, 400);
  const first = matched.data?.agents?.[0];
  const [schemas] = useAsync(() => (first ? api("GET", `agents/${encodeURIComponent(first.agent_id)}/verbs`) : null), [first?.agent_id]);
  // Verbs every previewed target offers, with the first one's schemas.
  const verbs = useMemo(() => {
    const agents = matched.data?.agents || [];
    const all = schemas.data?.verbs || {};
    return Object.keys(all).filter((name) => agents.every((a) => a.verbs.includes(name))).sort();
  }, [matched.data, schemas.data]);
  const spec = schemas.data?.verbs?.[verb.value];
  const params = spec?.params || {};

  function body() {
    const s = settings.value;
    const { args, errors: found } = readArgs(form.current, params);
    errors.value = found;
    if (Object.keys(found).length) return null;
    const job = { verb: verb.value, args, selector: selector.value.trim(), concurrency: amount(s.concurrency), max_errors: amount(s.max_errors) };
    if (s.canary) job.canary = Number(s.canary);
    if (s.canary && s.canary_auto) job.canary_auto = true;
    if (s.ttl) job.ttl = Number(s.ttl);
    if (s.timeout) job.timeout = Number(s.timeout);
    return job;
  }

  async function start() {
    confirming.value = false;
    const job = body();
    if (!job) return;
    clearSecrets(form.current);
    try {
      const created = await api("POST", "jobs", job);
      go(["jobs", created.job_id]);
    } catch (e) {
      error.value = e;
      if (e.field) errors.value = { [e.field]: e.message };
    }
  }

  const set = (key) => (e) => (settings.value = { ...settings.value, [key]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const s = settings.value;
  const words = [
    "job", "start", verb.value || "VERB", ...preview.value, "--selector", selector.value.trim() || "S",
    "--concurrency", s.concurrency, "--max-errors", s.max_errors,
    s.canary && "--canary", s.canary || null, s.ttl && "--ttl", s.ttl || null, s.timeout && "--timeout", s.timeout || null,
  ];
  return html`<section class="page new-job">
    <p class="crumbs"><a href=${link(["jobs"])}>Jobs</a> › new</p>
    <h1>New job</h1>
    <form ref=${form} class="card" noValidate onSubmit=${(e) => {
      e.preventDefault();
      if (body()) confirming.value = true;
    }} onInput=${() => (preview.value = argWords(typedArgs(form.current, params), params))}>
      <div class="field"><label for="job-selector">Selector</label>
        <input id="job-selector" type="text" spellcheck="false" placeholder="site=prod,role=edge|core" value=${selector.value}
          onInput=${(e) => {
            selector.value = e.target.value;
            soon();
          }} />
        <small>Targets: the agents it matches when the job starts, in agent-id order.</small></div>
      <div class="preview">
        ${matched.error && html`<${ErrorText} error=${matched.error} />`}
        ${matched.data && html`<p><strong>${matched.data.total}</strong> ${matched.data.total === 1 ? "agent matches" : "agents match"}${matched.data.total ? ":" : "."}
          ${matched.data.agents.map((a) => html` <a href=${link(["agents", a.agent_id])}>${a.agent_id}</a>`)}${matched.data.total > matched.data.agents.length ? " …" : ""}</p>`}
      </div>
      <div class="field"><label for="job-verb">Verb</label>
        <select id="job-verb" value=${verb.value} onChange=${(e) => (verb.value = e.target.value)}>
          <option value="">(choose)</option>
          ${verbs.map((name) => html`<option value=${name}>${name}</option>`)}
        </select>
        ${spec && html`<small>${spec.description}${spec.changes_state !== false ? " — changes state" : ""}</small>`}</div>
      ${spec && html`<fieldset><legend>Arguments</legend><${SchemaFields} key=${verb.value} params=${params} initial=${initial.verb === verb.value ? initial.args || {} : {}} errors=${errors.value} /></fieldset>`}
      <fieldset class="inline"><legend>Rollout</legend>
        <div class="field"><label for="job-concurrency">concurrency</label><input id="job-concurrency" value=${s.concurrency} onInput=${set("concurrency")} size="5" /><small>at once: N or N%</small></div>
        <div class="field"><label for="job-max-errors">max_errors</label><input id="job-max-errors" value=${s.max_errors} onInput=${set("max_errors")} size="5" /><small>stop after: N or N%</small></div>
        <div class="field"><label for="job-canary">canary</label><input id="job-canary" type="number" min="1" value=${s.canary} onInput=${set("canary")} size="5" /><small>first N, then pause</small></div>
        <div class="field"><label><input type="checkbox" checked=${s.canary_auto} onChange=${set("canary_auto")} /> continue by itself if the canary succeeds</label></div>
        <div class="field"><label for="job-ttl">ttl (s)</label><input id="job-ttl" type="number" min="1" value=${s.ttl} onInput=${set("ttl")} size="7" /></div>
        <div class="field"><label for="job-timeout">timeout (s)</label><input id="job-timeout" type="number" min="1" value=${s.timeout} onInput=${set("timeout")} size="7" /></div>
      </fieldset>
      ${!confirming.value && html`<button type="submit" class="primary" disabled=${!spec || !matched.data?.total}>Start job</button>`}
      ${confirming.value && html`<${Confirm} message=${`Start ${verb.value} on ${matched.data?.total} agents (${selector.value.trim()})${spec?.changes_state !== false ? ", changing their state" : ""}?`}
        label="Start" onConfirm=${start} onCancel=${() => (confirming.value = false)} />`}
      <${ErrorText} error=${error.value} />
    </form>
    <${Cli} command=${viworks(...words)} />
  </section>`;
}

// -- one job -----------------------------------------------------------------------------

export function Job({ jobId }) {
  const [state, reload] = useAsync(() => api("GET", `jobs/${encodeURIComponent(jobId)}`), [jobId]);
  const live = useSignal(null);
  const soon = useSoon(reload, 300);
  const job = state.data;
  useLive(["job.progress"], (e) => {
    if (e.job_id !== jobId) return;
    live.value = e;
    soon();
  });
  useLive(["command.status"], (e) => job && job.commands.some((c) => c.command_id === e.command_id) && soon());
  useLive(["resync"], reload);
  useEffect(() => {
    live.value = null;
  }, [state.data]);
  const confirming = useSignal(null);
  const error = useSignal(null);
  if (!job) return html`<section class="page"><${ErrorText} error=${state.error} /></section>`;
  const status = live.value?.status || job.status;
  const counts = live.value?.counts || job.counts;
  const failed = job.commands.filter((c) => BAD.has(c.status));

  async function act(action) {
    confirming.value = null;
    error.value = null;
    try {
      await api("POST", `jobs/${encodeURIComponent(jobId)}/${action}`);
      reload();
    } catch (e) {
      error.value = e;
    }
  }
  function againOnFailed() {
    prefill = {
      selector: `id=${[...new Set(failed.map((c) => c.agent_id))].join("|")}`,
      verb: job.verb,
      args: publicArgs(job.args),
      concurrency: job.concurrency,
      max_errors: job.max_errors,
    };
    go(["jobs", "new"]);
  }
  const can = isOperator();
  return html`<section class="page job">
    <p class="crumbs"><a href=${link(["jobs"])}>Jobs</a> › ${shortId(jobId)}</p>
    <h1>${job.verb} <span class="muted">on</span> <span class="mono">${job.selector}</span> <${Status} value=${status} /></h1>
    ${job.error && html`<p class=${job.error.code === "CANARY" ? "explain" : "error"}>${job.error.code}: ${job.error.message}</p>`}
    <${Progress} counts=${counts} total=${job.targets} />
    <p><${Counts} counts=${counts} /> of ${job.targets} targets</p>
    <div class="actions">
      ${can && status === "running" && html`<button type="button" onClick=${() => act("pause")}>Pause</button>`}
      ${can && status === "paused" && html`<button type="button" class="primary" onClick=${() => act("resume")}>Resume</button>`}
      ${can && !DONE.has(status) && html`<button type="button" class="danger" onClick=${() => (confirming.value = "cancel")}>Cancel job</button>`}
      ${can && failed.length > 0 && html`<button type="button" onClick=${againOnFailed}>Run again on the ${failed.length} failed targets only</button>`}
    </div>
    ${confirming.value === "cancel" && html`<${Confirm} message="Cancel the job? No further agent is started and unfinished commands are cancelled."
      label="Cancel it" onConfirm=${() => act("cancel")} onCancel=${() => (confirming.value = null)} />`}
    <${ErrorText} error=${error.value} />
    <dl class="facts">
      <dt>Concurrency</dt><dd>${job.concurrency} (${job.concurrency_limit} at once)</dd>
      <dt>max_errors</dt><dd>${job.max_errors} (stops after ${job.max_errors_limit})</dd>
      <dt>Canary</dt><dd>${job.canary ? `${job.canary} first${job.canary_auto ? ", then on by itself" : ", then pause"}${job.canary_passed ? " (passed)" : ""}` : "none"}</dd>
      <dt>Created</dt><dd><${Time} at=${job.created_at} /> by ${job.created_by}</dd>
      ${job.finished_at && html`<dt>Finished</dt><dd><${Time} at=${job.finished_at} /></dd>`}
    </dl>
    <h2>Targets</h2>
    <table class="list">
      <thead><tr><th>Agent</th><th>Status</th><th>Command</th><th>Error</th></tr></thead>
      <tbody>${job.commands.map((c) => html`<tr>
        <td><a href=${link(["agents", c.agent_id])}>${c.agent_id}</a></td><td><${Status} value=${c.status} /></td>
        <td>${c.command_id ? html`<a class="mono" href=${link(["commands", c.command_id])}>${shortId(c.command_id)}</a>` : html`<span class="muted">—</span>`}</td>
        <td class="muted">${c.error ? (c.error.code || JSON.stringify(c.error)) : ""}</td></tr>`)}</tbody>
    </table>
    <${Cli} command=${viworks("job", status === "paused" ? "resume" : "show", jobId)} />
  </section>`;
}
