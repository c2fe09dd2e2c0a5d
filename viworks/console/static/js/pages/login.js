// The login page: one password field for an API token, traded for a session cookie.
import { login } from "../api.js";
import { html, useSignal } from "../lib.js";
import { ErrorText } from "../ui.js";

export function Login() {
  const error = useSignal(null);
  const busy = useSignal(false);

  async function submit(e) {
    e.preventDefault();
    const input = e.currentTarget.querySelector("input");
    const token = input.value.trim();
    if (!token) return;
    busy.value = true;
    error.value = null;
    try {
      await login(token);
    } catch (err) {
      error.value = err.status === 401 ? "This token is not valid: unknown, expired or revoked." : err;
    } finally {
      input.value = ""; // the token is not kept by the page
      busy.value = false;
    }
  }

  return html`<main class="login">
    <form onSubmit=${submit} class="card">
      <h1>ViWorkS console</h1>
      <label for="login-token">API token</label>
      <input id="login-token" type="password" autocomplete="off" autofocus required
        placeholder="vw_…" aria-describedby="login-help" />
      <button type="submit" disabled=${busy.value}>Log in</button>
      <${ErrorText} error=${error.value} />
      <p id="login-help" class="muted">Make one with <code>viworks token create --config backend.toml --name NAME --role viewer|operator|admin</code>.
        The page keeps only an HttpOnly session cookie, never the token.</p>
    </form>
  </main>`;
}
