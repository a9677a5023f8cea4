// The two views. Both load what is stored, then follow the live stream from the position the
// load was read at, and change the page in place: rows appear, change and go; the timeline grows.
import { LiveStream } from "./live.js";

const STATUSES = ["PENDING", "SUBMITTED", "VALIDATING", "PREPARING", "BUILDING", "RUNNING",
  "CANCELLING", "COMPLETED", "FAILED", "CANCELLED"];
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const JSON_FIELDS = ["submitted_configs", "execution_details", "progress_details",
  "error_info", "result_summary", "notification_config"];
const TEXT_FILTERS = [["type", "type"], ["tag_any", "any tag"], ["tag_all", "every tag"],
  ["creator", "creator"], ["name", "name contains"]];

const short = (status) => (status || "").replace(/^TASK_STATUS_/, "");
const deliveryState = (state) => (state || "").replace(/^DELIVERY_STATE_/, "");

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(text) {
  if (!text) return "";
  return new Date(text).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function duration(ms) {
  if (ms < 10000) return `${(Math.max(0, ms) / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function badge(status) {
  const name = short(status);
  return el("span", { class: `status s-${name.toLowerCase()}`, "data-status": name }, name);
}

function showError(app, error) {
  app.notice(`${error.code} (${error.reason}): ${error.message}`);
}

// Whether a task belongs in the table under the URL's filter (as ListTasks decides).
function matches(task, query) {
  const statuses = query.getAll("status").map((s) => short(s.toUpperCase()));
  if (statuses.length && !statuses.includes(short(task.status))) return false;
  const types = query.getAll("type");
  if (types.length && !types.includes(task.task_type)) return false;
  const tags = task.tags || [];
  const any = query.getAll("tag_any");
  if (any.length && !any.some((t) => tags.includes(t))) return false;
  if (!query.getAll("tag_all").every((t) => tags.includes(t))) return false;
  if (query.get("creator") && task.created_by !== query.get("creator")) return false;
  const name = query.get("name");
  if (name && !(task.task_name || "").toLowerCase().includes(name.toLowerCase())) return false;
  const created = new Date(task.created_at);
  if (query.get("created_after") && created < new Date(query.get("created_after"))) return false;
  if (query.get("created_before") && created >= new Date(query.get("created_before"))) return false;
  if (!task.active && query.get("show_deleted") !== "true") return false;
  return true;
}

// ---------------------------------------------------------------- the task table

export function renderTasks(app, view, query) {
  view.replaceChildren();
  const filters = filterForm(app, query);
  const counts = el("div", { id: "counts" });
  const body = el("tbody");
  const table = el("table", { id: "tasks" },
    el("thead", {}, el("tr", {}, ["task", "name", "type", "status", "priority", "tags",
      "created by", "created", "updated"].map((h) => el("th", {}, h)))),
    body);
  const pager = el("nav", { id: "pager" });
  view.append(el("h1", {}, "Tasks"), filters, counts, table, pager);

  let stream = null;
  let stopped = false;
  const firstPage = !query.get("page_token");
  const statusFilter = query.getAll("status").map((s) => short(s.toUpperCase()));
  const showDeleted = query.get("show_deleted") === "true";
  // What the events since the last flush call for. A page reads at most once per FLUSH_MS
  // (and counts once per COUNTS_MS), however fast tasks change: a status change of a shown row
  // is applied from the event itself; only new rows need the list read again.
  const FLUSH_MS = 250;
  const COUNTS_MS = 1000;
  const dirty = { list: false, rows: new Set(), counts: false };
  let flushTimer = null;
  let countsAt = 0;
  let received = 0; // events received so far
  const recent = []; // the latest events, re-applied over a read that may predate them

  const refreshCounts = async () => {
    countsAt = Date.now();
    const params = new URLSearchParams(query);
    params.delete("page_token");
    params.delete("page_size");
    try {
      const found = await app.api(`/api/counts?${params}`);
      counts.replaceChildren(el("span", { class: "total" }, `${found.total} tasks`),
        ...STATUSES.filter((s) => found.counts[s]).map((s) =>
          el("span", { class: "count", "data-count-status": s }, badge(s), ` ${found.counts[s]}`)));
    } catch (error) {
      if (error.status !== 401) showError(app, error);
    }
  };

  const row = (task) => el("tr", { "data-task-id": task.task_id, class: task.active ? "" : "deleted" },
    el("td", {}, el("a", { href: `/tasks/${encodeURIComponent(task.task_id)}`, "data-nav": "" }, task.task_id)),
    el("td", {}, task.task_name || ""),
    el("td", {}, task.task_type),
    el("td", { class: "status-cell" }, badge(task.status)),
    el("td", { class: "num" }, task.priority || 0),
    el("td", {}, (task.tags || []).map((t) => el("span", { class: "tag" }, t))),
    el("td", {}, task.created_by || ""),
    el("td", {}, when(task.created_at)),
    el("td", { class: "updated-cell" }, when(task.updated_at)));

  const findRow = (id) => [...body.rows].find((r) => r.dataset.taskId === id);
  const empty = el("p", { class: "muted", id: "no-tasks", hidden: true }, "No task matches.");
  view.insertBefore(empty, pager);
  const flash = (tr) => { tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash"); };

  // One event on the rows shown; `replay`: re-applied over a fresher read, asking for no read.
  const apply = (event, replay = false) => {
    const tr = findRow(event.task_id);
    const type = event.event_type;
    const wantList = () => { if (firstPage && !replay) dirty.list = true; };
    if (!tr) {
      if (type === "CREATED" || type === "UNDELETED") wantList();
      // A task not shown may have moved into the statuses the filter names.
      if (type === "STATUS_CHANGE" && statusFilter.includes(short(event.new_status))) wantList();
      return;
    }
    if (type === "STATUS_CHANGE") {
      if (statusFilter.length && !statusFilter.includes(short(event.new_status))) {
        tr.remove();
        wantList(); // refill the page
      } else {
        tr.querySelector(".status-cell").replaceChildren(badge(event.new_status));
        tr.querySelector(".updated-cell").textContent = when(event.timestamp);
        flash(tr);
      }
    } else if (type === "DELETED" && !showDeleted) {
      tr.remove();
      wantList();
    } else if (!replay) {
      dirty.rows.add(event.task_id); // UPDATED, UNDELETED, DELETED with deleted rows shown
    }
  };

  // Runs `read`, then re-applies the events that arrived while it was under way.
  const reading = async (read) => {
    const before = received;
    const done = await read();
    const since = recent.slice(Math.max(0, recent.length - (received - before)));
    for (const event of since) apply(event, true);
    return done;
  };

  const showPage = (page, known) => {
    body.replaceChildren(...page.tasks.map((task) => {
      const fresh = row(task);
      if (known && !known.has(task.task_id)) fresh.classList.add("flash");
      return fresh;
    }));
    empty.hidden = page.tasks.length > 0;
  };

  const flush = async () => {
    flushedAt = Date.now();
    if (stopped) return;
    if (dirty.list) {
      dirty.list = false;
      const known = new Set([...body.rows].map((r) => r.dataset.taskId));
      await reading(async () => {
        try {
          const page = await app.api(`/api/tasks?${query}`);
          if (!stopped) showPage(page, known);
        } catch (error) {
          if (error.status !== 401) showError(app, error);
        }
      });
    }
    const ids = [...dirty.rows].slice(0, 20);
    for (const id of ids) {
      dirty.rows.delete(id);
      await reading(async () => {
        let task = null;
        try {
          task = await app.api(`/api/tasks/${encodeURIComponent(id)}`);
        } catch (error) {
          if (error.status !== 404) { showError(app, error); return; }
        }
        const existing = findRow(id);
        if (stopped || !existing) return;
        if (task && matches(task, query)) { const fresh = row(task); flash(fresh); existing.replaceWith(fresh); }
        else existing.remove();
      });
    }
    empty.hidden = body.rows.length > 0;
    flushTimer = null;
    if (dirty.counts && Date.now() - countsAt >= COUNTS_MS) {
      dirty.counts = false;
      refreshCounts();
    }
    if (dirty.list || dirty.rows.size || dirty.counts) schedule();
  };
  let flushedAt = 0;
  const schedule = () => {
    if (flushTimer || stopped) return;
    // At once after a quiet spell, else once FLUSH_MS have passed since the last flush.
    flushTimer = setTimeout(flush, Math.max(0, flushedAt + FLUSH_MS - Date.now()));
  };

  const load = async () => {
    let page;
    try {
      page = await app.api(`/api/tasks?${query}`);
    } catch (error) {
      if (error.status !== 401) showError(app, error);
      return;
    }
    if (stopped) return;
    showPage(page, null);
    pager.replaceChildren();
    if (query.get("page_token")) {
      const first = new URLSearchParams(query);
      first.delete("page_token");
      pager.append(el("a", { href: `/?${first}`, "data-nav": "", id: "first-page" }, "« first page"));
    }
    if (page.next_page_token) {
      const next = new URLSearchParams(query);
      next.set("page_token", page.next_page_token);
      pager.append(el("a", { href: `/?${next}`, "data-nav": "", id: "next-page" }, "next page »"));
    }
    refreshCounts();
    const params = new URLSearchParams();
    for (const type of query.getAll("type")) params.append("type", type);
    stream = new LiveStream(`/api/events?${params}`, {
      token: app.token,
      position: page.log_position,
      heartbeatSeconds: app.session.heartbeat_seconds,
      onState: (name) => app.liveState(name),
      onEvent: (event) => {
        received += 1;
        recent.push(event);
        if (recent.length > 1000) recent.splice(0, recent.length - 1000);
        apply(event);
        dirty.counts = true;
        schedule();
      },
      onPurged: () => {
        app.notice("Retention purged events this page had not seen: the list was read again.", "info");
        stream.stop();
        load();
      },
      onError: (error) => showError(app, error),
    }).start();
  };
  load();
  return { stop: () => { stopped = true; clearTimeout(flushTimer); if (stream) stream.stop(); } };
}

function filterForm(app, query) {
  const form = el("form", { id: "filters" });
  const statusBox = el("fieldset", { class: "statuses" }, el("legend", {}, "status"));
  const chosen = new Set(query.getAll("status").map((s) => short(s.toUpperCase())));
  for (const s of STATUSES) {
    statusBox.append(el("label", {}, el("input", { type: "checkbox", name: "status", value: s, checked: chosen.has(s) }), " ", s));
  }
  form.append(statusBox);
  for (const [name, label] of TEXT_FILTERS) {
    form.append(el("label", {}, label, " ", el("input", { name, value: query.getAll(name).join(","), size: 12 })));
  }
  for (const [name, label] of [["created_after", "created from"], ["created_before", "created before"]]) {
    const value = query.get(name) ? new Date(query.get(name)).toISOString().slice(0, 16) : "";
    form.append(el("label", {}, label, " (UTC) ", el("input", { type: "datetime-local", name, value })));
  }
  const order = el("select", { name: "order_by" });
  for (const o of ["", "created_at asc", "updated_at desc", "updated_at asc", "priority desc", "priority asc"]) {
    order.append(el("option", { value: o, selected: (query.get("order_by") || "") === o }, o || "newest first"));
  }
  form.append(el("label", {}, "order ", order));
  form.append(el("label", {}, el("input", { type: "checkbox", name: "show_deleted", value: "true", checked: query.get("show_deleted") === "true" }), " deleted too"));
  form.append(el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (!value) continue;
      if (name === "created_after" || name === "created_before") {
        next.set(name, `${value}:00Z`);
      } else if (name === "type" || name === "tag_any" || name === "tag_all") {
        for (const part of value.split(",").map((v) => v.trim()).filter(Boolean)) next.append(name, part);
      } else {
        next.append(name, value);
      }
    }
    app.navigate(`/?${next}`);
  });
  return form;
}

// ---------------------------------------------------------------- one task

export function renderTask(app, view, taskId) {
  view.replaceChildren();
  const head = el("div", { id: "task-head" });
  const actions = el("div", { id: "actions" });
  const fields = el("table", { id: "fields" });
  const jsons = el("div", { id: "json-fields" });
  const timeline = el("ol", { id: "timeline" });
  const sent = el("table", { id: "deliveries" });
  const redeliver = el("div", { id: "delivery-actions" });
  const history = el("section", { id: "history" }, el("h2", {}, "Timeline"), timeline,
    el("h2", {}, "Webhook deliveries"), redeliver, sent);
  view.append(el("p", {}, el("a", { href: "/", "data-nav": "" }, "« all tasks")), head, actions,
    el("div", { class: "task-body" },
      el("section", { id: "task-fields" }, el("h2", {}, "Fields"), fields, jsons), history));

  let stream = null;
  let stopped = false;
  let task = null;
  const events = [];
  let deliveries = [];
  const ticker = setInterval(() => drawTimeline(), 1000);
  // Attempts are no events: while one is pending, the deliveries are read again every 2 s.
  const deliveryTicker = setInterval(() => {
    if (deliveries.some((d) => deliveryState(d.state) === "PENDING")) loadDeliveries();
  }, 2000);

  const drawDeliveries = () => {
    if (!deliveries.length) {
      sent.replaceChildren(el("tr", {}, el("td", {}, "No webhook deliveries (see the task's notification_config).")));
      redeliver.replaceChildren();
      return;
    }
    sent.replaceChildren(
      el("tr", {}, ...["event", "url", "state", "attempts", "last HTTP", "last error", "next attempt"].map((h) => el("th", {}, h))),
      ...deliveries.map((d) => el("tr", { "data-delivery-id": d.delivery_id, "data-state": deliveryState(d.state) },
        el("td", {}, String(d.event_id)),
        el("td", {}, d.url),
        el("td", {}, el("span", { class: `status d-${deliveryState(d.state).toLowerCase()}` }, deliveryState(d.state))),
        el("td", {}, String(d.attempts)),
        el("td", {}, d.last_status_code ? String(d.last_status_code) : ""),
        el("td", {}, d.last_error || ""),
        el("td", {}, d.next_attempt_at ? when(d.next_attempt_at) : ""))));
    redeliver.replaceChildren();
    const again = deliveries.filter((d) => ["DEAD", "DISABLED"].includes(deliveryState(d.state))).length;
    if (app.session.can_write && again) {
      redeliver.append(el("button", { id: "redeliver", type: "button", onclick: async () => {
        try {
          await app.api(`/api/tasks/${encodeURIComponent(taskId)}/redeliver`, { method: "POST", body: {} });
          app.notice("");
          loadDeliveries();
        } catch (error) {
          showError(app, error);
        }
      } }, `Redeliver ${again} dead or disabled`));
    }
  };

  const loadDeliveries = async () => {
    try {
      const found = [];
      let token = "";
      do {
        const page = await app.api(`/api/tasks/${encodeURIComponent(taskId)}/deliveries?page_size=1000${token ? `&page_token=${encodeURIComponent(token)}` : ""}`);
        found.push(...page.deliveries);
        token = page.next_page_token;
      } while (token);
      deliveries = found;
      if (!stopped) drawDeliveries();
    } catch (error) {
      if (error.status !== 401) showError(app, error);
    }
  };

  const drawTask = () => {
    head.replaceChildren(el("h1", {}, taskId, " ", badge(task.status),
      task.active ? null : el("span", { class: "status s-deleted" }, "DELETED")));
    fields.replaceChildren(...["task_name", "task_type", "description", "priority", "tags",
      "created_by", "created_at", "updated_at", "started_at", "finished_at", "expires_at",
      "etag", "active"].map((name) => {
      let value = task[name];
      if (name.endsWith("_at")) value = when(value);
      if (name === "tags") value = (value || []).join(", ");
      return el("tr", {}, el("th", {}, name), el("td", { "data-field": name }, String(value ?? "")));
    }));
    jsons.replaceChildren(...JSON_FIELDS.filter((name) => task[name] && Object.keys(task[name]).length)
      .map((name) => el("details", { open: true, "data-json": name }, el("summary", {}, name),
        el("pre", {}, JSON.stringify(task[name], null, 2)))));
    actions.replaceChildren();
    if (!app.session.can_write) return;
    const act = (label, path, body, id) => el("button", { id, type: "button", onclick: async () => {
      if (path.endsWith("delete") && !path.endsWith("undelete") && !confirm(`Delete ${taskId}?`)) return;
      try {
        task = await app.api(`/api/tasks/${encodeURIComponent(taskId)}/${path}`, { method: "POST", body });
        app.notice("");
        drawTask();
      } catch (error) {
        showError(app, error);
      }
    } }, label);
    const status = short(task.status);
    if (task.active && !TERMINAL.has(status)) {
      if (status !== "CANCELLING") actions.append(act("Cancel (CANCELLING)", "cancel", { status: "CANCELLING" }, "cancelling"));
      actions.append(act("Cancel now (CANCELLED)", "cancel", { status: "CANCELLED" }, "cancel"));
    }
    actions.append(task.active ? act("Delete", "delete", {}, "delete") : act("Undelete", "undelete", {}, "undelete"));
  };

  // Each status change with its actor and how long the task stayed in the status it entered.
  const drawTimeline = () => {
    if (stopped) return;
    const changes = events.filter((e) => e.event_type === "STATUS_CHANGE" || e.event_type === "CREATED");
    timeline.replaceChildren(...events.map((event) => {
      const at = new Date(event.timestamp);
      let entered = null;
      if (event.event_type === "CREATED") entered = "PENDING";
      if (event.event_type === "STATUS_CHANGE") entered = short(event.new_status);
      let stay = null;
      if (entered) {
        const next = changes[changes.indexOf(event) + 1];
        const end = next ? new Date(next.timestamp) : TERMINAL.has(entered) ? null : new Date();
        stay = end ? `${duration(end - at)} in ${entered}${next ? "" : " so far"}` : "final";
      }
      const data = event.event_data && Object.keys(event.event_data).length
        ? el("details", {}, el("summary", {}, "data"), el("pre", {}, JSON.stringify(event.event_data, null, 2)))
        : null;
      return el("li", { "data-event-id": event.event_id, "data-event-type": event.event_type },
        el("span", { class: "when" }, when(event.timestamp)),
        el("span", { class: "what" }, event.event_type === "STATUS_CHANGE"
          ? [badge(event.previous_status), " → ", badge(event.new_status)] : event.event_type),
        el("span", { class: "actor" }, event.actor ? `by ${event.actor}` : ""),
        el("span", { class: "stay" }, stay || ""),
        data);
    }));
  };

  const reloadTask = async () => {
    try {
      task = await app.api(`/api/tasks/${encodeURIComponent(taskId)}`);
      if (!stopped) drawTask();
    } catch (error) {
      if (error.status !== 401) showError(app, error);
    }
  };

  const load = async () => {
    events.length = 0;
    try {
      task = await app.api(`/api/tasks/${encodeURIComponent(taskId)}`);
      let token = "";
      do {
        const page = await app.api(`/api/tasks/${encodeURIComponent(taskId)}/events?page_size=1000${token ? `&page_token=${encodeURIComponent(token)}` : ""}`);
        events.push(...page.events);
        token = page.next_page_token;
      } while (token);
    } catch (error) {
      if (error.status !== 401) showError(app, error);
      return;
    }
    if (stopped) return;
    drawTask();
    drawTimeline();
    loadDeliveries();
    const last = events.length ? events[events.length - 1].event_id : "0";
    stream = new LiveStream(`/api/events?task_id=${encodeURIComponent(taskId)}`, {
      token: app.token,
      position: last,
      heartbeatSeconds: app.session.heartbeat_seconds,
      onState: (name) => app.liveState(name),
      onEvent: (event) => {
        events.push(event);
        drawTimeline();
        reloadTask();
        loadDeliveries();
      },
      onPurged: () => {
        app.notice("Retention purged this task's events: the page was read again.", "info");
        stream.stop();
        load();
      },
      onError: (error) => showError(app, error),
    }).start();
  };
  load();
  return { stop: () => { stopped = true; clearInterval(ticker); clearInterval(deliveryTicker); if (stream) stream.stop(); } };
}
