// Live updates: the server's Server-Sent Events read through fetch (EventSource cannot send
// an Authorization header, and a token never goes into a URL). Every event and heartbeat
// carries an `id`; a reconnect sends the last one as Last-Event-ID and the server replays
// exactly what was missed, so nothing is lost or shown twice.

export class LiveStream {
  constructor(path, { token, position, heartbeatSeconds, onEvent, onPurged, onState, onError }) {
    this.path = path;
    this.token = token;
    this.lastId = position == null ? null : String(position);
    this.idleLimit = Math.max(5, 3 * (heartbeatSeconds || 15)) * 1000;
    this.handlers = { onEvent, onPurged, onState, onError };
    this.retryMs = 1000;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  state(name) {
    if (this.handlers.onState) this.handlers.onState(name);
  }

  async run() {
    let failures = 0;
    while (!this.stopped) {
      const outcome = await this.connect().catch(() => "dropped");
      if (this.stopped || outcome === "stop") return;
      failures = outcome === "ended" ? 0 : failures + 1;
      this.state("reconnecting");
      const wait = outcome === "ended" ? this.retryMs : Math.min(5000, this.retryMs * failures);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  // One connection: "ended" when the server ended it (resume at once), "dropped" when it
  // broke, "stop" when nothing more may come (purged, refused).
  async connect() {
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
    const response = await fetch(this.path, { headers, signal: this.controller.signal, cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const retry = response.status === 429 || response.status >= 500;
      if (!retry && this.handlers.onError) this.handlers.onError(body.error || {}, response.status);
      return retry ? "dropped" : "stop";
    }
    this.state("live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), this.idleLimit);
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "ended";
        arm();
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const verdict = this.dispatch(block);
          if (verdict) return verdict;
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  dispatch(block) {
    let name = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    }
    const payload = data.length ? JSON.parse(data.join("\n")) : null;
    if (name === "task_event" && this.handlers.onEvent) this.handlers.onEvent(payload);
    if (id !== null) this.lastId = id;
    if (name === "purged") {
      if (this.handlers.onPurged) this.handlers.onPurged(payload && payload.error);
      return "stop";
    }
    if (name === "end") {
      const reason = payload && payload.error && payload.error.reason;
      if (reason === "UNAUTHENTICATED") {
        if (this.handlers.onError) this.handlers.onError(payload.error, 401);
        return "stop";
      }
      return "ended";
    }
    return null;
  }
}
