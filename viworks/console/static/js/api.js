// The backend's JSON API, authenticated by the session cookie (never by a token held here).
import { signal } from "./lib.js";

// Relative to the page (/ui/), so the console also works under a path prefix.
export const API = new URL("../api/v1/", document.baseURI).pathname;

// undefined: not known yet; null: logged out; else GET /api/v1/session's answer.
export const me = signal(undefined);
let csrf = null;

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export async function api(method, path, body, { idempotencyKey } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "NETWORK", `the backend cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401 && path !== "session") forget();
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || response.statusText,
      error.field,
    );
  }
  return data;
}

function forget() {
  csrf = null;
  me.value = null;
}

/** Is the page logged in already (a session cookie from before a reload)? */
export async function restoreSession() {
  try {
    const session = await api("GET", "session");
    csrf = session.csrf_token;
    me.value = session;
  } catch (e) {
    if (e.status !== 401) throw e;
    forget();
  }
}

export async function login(token) {
  const session = await api("POST", "session", { token });
  csrf = session.csrf_token;
  me.value = session;
}

export async function logout() {
  try {
    await api("DELETE", "session");
  } finally {
    forget();
  }
}

/** May the session run ``verb`` on an agent of ``site`` (undefined: site not known)?
 * The page offers only what this allows; the API decides anyway. */
export function mayRun(verb, site) {
  const session = me.value;
  if (!session || session.role === "viewer") return false;
  if (session.role === "admin") return true;
  const verbOk = !session.verbs || session.verbs.includes(verb);
  return verbOk && (!session.sites || site === undefined || session.sites.includes(site));
}

export const isOperator = () => !!me.value && me.value.role !== "viewer";
export const isAdmin = () => !!me.value && me.value.role === "admin";

/** A fresh Idempotency-Key (crypto.randomUUID needs a secure context; this does not). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return pairs.length ? "?" + new URLSearchParams(pairs).toString() : "";
}
