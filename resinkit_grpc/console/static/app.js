// The console's shell: who is calling (token or open), the API client, routing between the
// task table (/) and one task (/tasks/ID). Filters live in the URL's query string.
import { renderTask, renderTasks } from "./views.js";

const TOKEN_KEY = "resinkit-console-token";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "UNKNOWN";
    this.reason = error.reason || "";
  }
}

export const app = {
  session: null,
  token: sessionStorage.getItem(TOKEN_KEY),
  current: null, // what the shown view must stop (its live stream) before another starts

  async api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
    });
    const body = await response.json().catch(() => ({ error: { message: "not JSON" } }));
    if (!response.ok) {
      const error = new ApiError(response.status, body.error || {});
      if (response.status === 401) this.askForToken(error.message);
      throw error;
    }
    return body;
  },

  notice(text, kind = "error") {
    const box = document.getElementById("notice");
    box.textContent = text;
    box.className = kind;
    box.hidden = !text;
  },

  liveState(name) {
    const badge = document.getElementById("live-state");
    badge.dataset.state = name;
    badge.textContent = { live: "● live", reconnecting: "◌ reconnecting…", idle: "○ idle" }[name] || name;
  },

  navigate(href) {
    history.pushState(null, "", href);
    this.route();
  },

  askForToken(why) {
    this.stopView();
    const view = document.getElementById("view");
    view.replaceChildren();
    const form = document.createElement("form");
    form.id = "token-form";
    form.innerHTML = `<h1>Sign in</h1>
      <p>This server requires a bearer token (see <code>resinkit-grpc tokens new</code>).</p>
      <p class="muted"></p>
      <label>Token <input id="token" type="password" autocomplete="off" required></label>
      <button type="submit">Use token</button>`;
    form.querySelector(".muted").textContent = why || "";
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.token = form.querySelector("#token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, this.token);
      this.boot();
    });
    view.append(form);
  },

  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    this.token = null;
    this.boot();
  },

  async boot() {
    this.notice("");
    try {
      this.session = await this.api("/api/session");
    } catch (error) {
      if (error.status !== 401) this.notice(`${error.code} (${error.reason}): ${error.message}`);
      return;
    }
    const who = document.getElementById("who");
    who.replaceChildren();
    if (this.session.auth) {
      who.textContent = `${this.session.principal} (${this.session.role}) `;
      const out = document.createElement("button");
      out.textContent = "Sign out";
      out.className = "link";
      out.addEventListener("click", () => this.signOut());
      who.append(out);
    } else {
      who.className = "open";
      who.textContent = "open: no authentication — anyone who reaches this port reads and changes every task";
    }
    this.route();
  },

  stopView() {
    if (this.current) this.current.stop();
    this.current = null;
    this.liveState("idle");
  },

  route() {
    this.stopView();
    this.notice("");
    const view = document.getElementById("view");
    const match = location.pathname.match(/^\/tasks\/([^/]+)$/);
    this.current = match
      ? renderTask(this, view, decodeURIComponent(match[1]))
      : renderTasks(this, view, new URLSearchParams(location.search));
  },
};

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  app.navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", () => app.route());
app.boot();
