// Forms generated from the verb schemas agents announce (docs/protocol.md §6).
// Inputs are uncontrolled (defaultValue, never value: a re-render must not reset what
// was typed): values stay in the DOM until submitted, so a secret is never copied
// into page state; ``clearSecrets`` empties them after a submission.
import { html } from "./lib.js";

function constraints(spec) {
  const parts = [];
  if (spec.min !== undefined) parts.push(`≥ ${spec.min}`);
  if (spec.max !== undefined) parts.push(`≤ ${spec.max}`);
  if (spec.min_length !== undefined) parts.push(`at least ${spec.min_length} characters`);
  if (spec.max_length !== undefined) parts.push(`at most ${spec.max_length} characters`);
  if (spec.pattern !== undefined) parts.push(`matching ${spec.pattern}`);
  if (spec.type === "ip") parts.push("an IPv4 or IPv6 address");
  if (spec.type === "secret") parts.push("secret: sent once, never shown or stored");
  return parts.join(", ");
}

export function isRequired(spec) {
  return spec.required !== false && spec.default === undefined;
}

function Input({ id, name, spec, value }) {
  const common = { id, "data-param": name, "data-type": spec.type, required: isRequired(spec) && spec.type !== "boolean" };
  switch (spec.type) {
    case "secret":
      return html`<input ...${common} type="password" autocomplete="new-password" minlength=${spec.min_length} maxlength=${spec.max_length} />`;
    case "integer":
    case "number":
      return html`<input ...${common} type="number" step=${spec.type === "integer" ? "1" : "any"} min=${spec.min} max=${spec.max} defaultValue=${value ?? ""} />`;
    case "boolean":
      return html`<input ...${common} type="checkbox" defaultChecked=${!!value} />`;
    case "enum":
      return html`<select ...${common}>
        ${!isRequired(spec) && html`<option value="">(default)</option>`}
        ${spec.values.map((v) => html`<option value=${JSON.stringify(v)} selected=${v === value}>${String(v)}</option>`)}
      </select>`;
    default:
      return html`<input ...${common} type="text" autocomplete="off" spellcheck="false" minlength=${spec.min_length} maxlength=${spec.max_length} defaultValue=${value ?? ""}
        placeholder=${spec.type === "ip" ? "192.0.2.10 or 2001:db8::10" : ""} />`;
  }
}

/** One field per parameter; ``initial`` pre-fills (never secrets); ``errors`` by name. */
export function SchemaFields({ params, initial = {}, errors = {} }) {
  const names = Object.keys(params || {});
  if (!names.length) return html`<p class="muted">This verb takes no parameters.</p>`;
  return names.map((name) => {
    const spec = params[name];
    const id = "param-" + name;
    const value = spec.type === "secret" ? undefined : initial[name] !== undefined ? initial[name] : spec.default;
    return html`<div class=${"field" + (errors[name] ? " invalid" : "")}>
      <label for=${id}>${name}${isRequired(spec) ? "" : " (optional)"}</label>
      <${Input} id=${id} name=${name} spec=${spec} value=${value} />
      <small>${[spec.description, constraints(spec)].filter(Boolean).join(" — ")}</small>
      ${errors[name] && html`<small class="error">${errors[name]}</small>`}
    </div>`;
  });
}

function matches(pattern, text) {
  try {
    return new RegExp(`^(?:${pattern})$`, "u").test(text);
  } catch {
    return true; // a Python-only pattern: the backend checks it
  }
}

/** ``{args, errors}`` from the form's fields, checked against the schema. */
export function readArgs(form, params) {
  const args = {};
  const errors = {};
  for (const [name, spec] of Object.entries(params || {})) {
    const el = form.querySelector(`[data-param="${CSS.escape(name)}"]`);
    if (!el) continue;
    if (spec.type === "boolean") {
      args[name] = el.checked;
      continue;
    }
    const raw = el.value;
    if (raw === "") {
      if (isRequired(spec)) errors[name] = "required";
      continue;
    }
    let value = raw;
    if (spec.type === "integer" || spec.type === "number") {
      value = Number(raw);
      if (!Number.isFinite(value) || (spec.type === "integer" && !Number.isInteger(value))) {
        errors[name] = `must be ${spec.type === "integer" ? "an integer" : "a number"}`;
        continue;
      }
      if ((spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)) {
        errors[name] = `must be within [${spec.min ?? "-∞"}, ${spec.max ?? "∞"}]`;
        continue;
      }
    } else if (spec.type === "enum") {
      value = JSON.parse(raw);
    } else {
      if (spec.min_length !== undefined && raw.length < spec.min_length) errors[name] = `at least ${spec.min_length} characters`;
      else if (spec.max_length !== undefined && raw.length > spec.max_length) errors[name] = `at most ${spec.max_length} characters`;
      else if (spec.pattern !== undefined && !matches(spec.pattern, raw)) errors[name] = `must match ${spec.pattern}`;
      if (errors[name]) continue;
    }
    args[name] = value;
  }
  return { args, errors };
}

/** The arguments typed so far for the command-line preview: secrets by name only. */
export function typedArgs(form, params) {
  if (!form) return {};
  const plain = Object.fromEntries(Object.entries(params).filter(([, spec]) => spec.type !== "secret"));
  const { args } = readArgs(form, plain);
  for (const [name, spec] of Object.entries(params)) if (spec.type === "secret") args[name] = "";
  return args;
}

export function clearSecrets(form) {
  form.querySelectorAll('input[data-type="secret"]').forEach((input) => {
    input.value = "";
  });
}

/** Non-secret arguments only (to pre-fill "run again"). */
export function publicArgs(args, params) {
  return Object.fromEntries(Object.entries(args || {}).filter(([name, v]) => (params?.[name]?.type !== "secret") && v !== "***"));
}
