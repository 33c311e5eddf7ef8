// etlq operator console: a static page over the REST API (/openapi.json).
//
// Rules this file keeps:
// - Everything from the server reaches the page as text (`h()` builds elements and text nodes;
//   nothing is ever assigned to innerHTML), so a file named <script>…</script>.xlsx is text.
// - Actions carry the operator's bearer token from sessionStorage (one browser session); no
//   cookie is set, so no cross-site form can act as the operator.
// - Every filter lives in the URL (#/jobs?state=dead&…): a view can be shared and reloaded.
"use strict";

const TOKEN_KEY = "etlq-token";
// What a dataset's checksum is (docs/openapi.json says the same).
const CHECKSUM_MEANS =
  "The sum (128-bit) of every record's content hash: the first 8 bytes of SHA-256 over its document id, 0x1F and its JSON body, as a signed 64-bit integer. Independent of record order: the same records give the same value on any system.";
const REFRESH_MS = 2000;

let refreshTimer = null;
let renderSeq = 0;

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "for") el.htmlFor = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "omit" });
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) throw apiError(resp.status, data);
  return data;
}

function apiError(status, data) {
  const e = data && data.error;
  let message = e ? e.message : "HTTP " + status;
  if (status === 401) message = "This needs an API token: enter it at the top of the page.";
  if (status === 403) message = "The API token was refused: " + message;
  return new ApiError(status, e ? e.code : "http_" + status, message);
}

function toast(message, kind) {
  const t = document.getElementById("toast");
  t.className = kind || "info";
  t.textContent = message;
}

function fmtTime(s) {
  if (!s) return "";
  const d = new Date(s);
  if (isNaN(d)) return s;
  return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function fmtAge(s) {
  if (!s) return "";
  const secs = Math.max(0, (Date.now() - new Date(s).getTime()) / 1000);
  if (secs < 60) return secs.toFixed(1) + " s";
  if (secs < 3600) return Math.floor(secs / 60) + " min";
  return Math.floor(secs / 3600) + " h";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
}

function badge(state) {
  return h("span", { class: "badge state-" + state }, state);
}

function jobLink(id) {
  return h("a", { href: "#/jobs/" + id, "data-job": id }, "#" + id);
}

function payloadField(job, key) {
  const p = job.payload || {};
  return typeof p[key] === "string" ? p[key] : "";
}

function table(caption, headers, rows, attrs) {
  return h(
    "table",
    attrs || {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "Nothing here.")))
  );
}

// A download of a job's artifact. A plain link would go without the tab's token (reads may
// need one), so a click fetches it with the token and saves what came back.
function downloadLink(path, name, label, id) {
  const a = h("a", { href: path, download: name, id: id || null }, label);
  a.addEventListener("click", async (e) => {
    if (!token()) return; // no token: the browser fetches it as any link
    e.preventDefault();
    try {
      const resp = await fetch(path, { headers: { Authorization: "Bearer " + token() }, credentials: "omit" });
      if (!resp.ok) throw apiError(resp.status, await resp.json().catch(() => null));
      const url = URL.createObjectURL(await resp.blob());
      const save = h("a", { href: url, download: name });
      document.body.appendChild(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      toast(err.message, "error");
    }
  });
  return a;
}

function field(id, label, control) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

// The action buttons: disabled while running, the outcome said in the toast.
function action(id, label, run, attrs) {
  const b = h("button", Object.assign({ type: "button", id }, attrs || {}), label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      const msg = await run();
      if (msg) toast(msg, "ok");
    } catch (e) {
      toast(e.message, "error");
    } finally {
      b.disabled = false;
      refreshNow();
    }
  });
  return b;
}

// ---------------------------------------------------------------- routing

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params ? params.toString() : "";
  location.hash = "#" + path + (q ? "?" + q : "");
}

const pages = [
  [/^\/$/, "overview", overview],
  [/^\/jobs$/, "jobs", jobs],
  [/^\/jobs\/(\d+)$/, "jobs", jobDetail],
  [/^\/dead-letters$/, "dead-letters", deadLetters],
  [/^\/datasets$/, "datasets", datasets],
  [/^\/datasets\/([^/]+)\/([^/]+)\/diff$/, "datasets", datasetDiff],
  [/^\/sources$/, "sources", sources],
  [/^\/sources\/([a-z0-9_-]+)$/, "sources", sourceDetail],
  [/^\/upload$/, "upload", upload],
];

let current = null;

async function render(keepFocus) {
  const seq = ++renderSeq;
  clearTimeout(refreshTimer);
  const { path, params } = route();
  const match = pages.map(([re, nav, fn]) => [path.match(re), nav, fn]).find(([m]) => m);
  const main = document.getElementById("main");
  for (const a of document.querySelectorAll("nav a")) {
    if (match && a.dataset.nav === match[1]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!match) {
    main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No console page at " + path + "."));
    return;
  }
  const [m, , fn] = match;
  const focusedId = keepFocus && document.activeElement && document.activeElement.id;
  let view;
  try {
    view = await fn(m, params);
  } catch (e) {
    view = e.status === 401 || (e.status === 403 && e.code === "forbidden") ? tokenPrompt(e) : { nodes: [h("h1", {}, "Error"), h("p", { class: "error", role: "alert" }, e.message)] };
  }
  if (seq !== renderSeq) return; // a newer render started meanwhile
  // Forms keep what the operator is typing: a refresh only replaces the live part.
  const live = main.querySelector("[data-live]");
  if (keepFocus && live && view.live && current === location.hash) {
    live.replaceWith(view.live);
  } else {
    main.replaceChildren(append(document.createDocumentFragment(), view.nodes));
  }
  current = location.hash;
  document.title = (view.title || "etlq") + " · etlq console";
  if (focusedId) {
    const el = document.getElementById(focusedId);
    if (el) el.focus();
  }
  if (view.refresh) refreshTimer = setTimeout(() => render(true), view.refresh);
}

// A read was refused: this server keeps its data behind a token. Ask for one here, keep it
// for the tab (sessionStorage) and show the page again.
function tokenPrompt(e) {
  const input = h("input", { id: "prompt-token", type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "prompt-why" });
  const form = h(
    "form",
    { id: "token-prompt", autocomplete: "off" },
    h("p", { id: "prompt-why", role: "alert" }, e.status === 401 ? "This server keeps its data behind an API token. Enter yours to continue." : "The API token was refused for this page: " + e.message),
    field("prompt-token", "API token", input),
    h("button", { type: "submit", id: "prompt-save" }, "Use token")
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    showToken();
    render(false);
  });
  setTimeout(() => input.focus(), 0);
  return { title: "Token needed", nodes: [h("h1", {}, "Token needed"), form] };
}

function refreshNow() {
  render(true);
}

// ---------------------------------------------------------------- overview

async function overview() {
  const [stats, fleet] = await Promise.all([api("GET", "/v1/stats"), api("GET", "/v1/fleet")]);
  const live = h("div", { "data-live": "" }, overviewBody(stats, fleet));
  return { title: "Overview", nodes: [h("h1", {}, "Overview"), live], live, refresh: REFRESH_MS };
}

function overviewBody(stats, fleet) {
  const states = ["queued", "running", "retrying", "succeeded", "dead", "cancelled"];
  const kinds = [...new Set(stats.counts.map((c) => c.kind))].sort();
  const count = (s, k) => {
    const c = stats.counts.find((x) => x.state === s && x.kind === k);
    return c ? c.count : 0;
  };
  const total = (s) => stats.counts.filter((x) => x.state === s).reduce((a, x) => a + x.count, 0);
  const hour = stats.last_hour;
  const sum = (k) => hour.reduce((a, b) => a + b[k], 0);
  return [
    h(
      "section",
      { class: "cards", "aria-label": "Summary" },
      card("Queue depth", stats.depth, "queued + retrying", "depth"),
      card("Running", total("running"), "now", "running"),
      card("Succeeded", sum("succeeded"), "last hour", "succeeded-hour"),
      card("Failures", sum("failed"), "last hour (stage failures and deaths)", "failed-hour"),
      card("Dead letters", stats.open_dead_letters, "open", "dead-letters")
    ),
    h("section", { "aria-labelledby": "chart-h" }, h("h2", { id: "chart-h" }, "Last hour"), chart(hour)),
    h(
      "section",
      { "aria-labelledby": "counts-h" },
      h("h2", { id: "counts-h" }, "Jobs by state and kind"),
      table(
        "Job counts",
        ["kind", ...states],
        kinds.map((k) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, k),
            states.map((s) => {
              const n = count(s, k);
              const params = new URLSearchParams({ state: s, kind: k });
              return h("td", { class: "num" }, n ? h("a", { href: "#/jobs?" + params }, String(n)) : "0");
            })
          )
        ),
        { id: "counts" }
      )
    ),
    fleetSection(fleet),
    h(
      "section",
      { "aria-labelledby": "fail-h" },
      h("h2", { id: "fail-h" }, "Recent failures"),
      table(
        "Failures in the last hour, newest first",
        ["at", "job", "kind", "event", "stage", "error"],
        stats.recent_failures.map((f) =>
          h("tr", {}, h("td", {}, fmtTime(f.at)), h("td", {}, jobLink(f.job_id)), h("td", {}, f.kind), h("td", {}, f.event), h("td", {}, f.stage || ""), h("td", { class: "wrap" }, f.error || ""))
        )
      )
    ),
  ];
}

function card(label, value, note, id) {
  return h("div", { class: "card", id: "card-" + id }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, String(value)), h("div", { class: "card-note" }, note));
}

function chart(hour) {
  const W = 720, H = 140, pad = 24;
  const bw = (W - pad) / hour.length;
  const maxBar = Math.max(1, ...hour.map((b) => b.succeeded + b.failed));
  const maxDepth = Math.max(1, ...hour.map((b) => b.depth));
  const y = (v, max) => H - pad - (v / max) * (H - 2 * pad);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "chart-title" });
  const succ = hour.reduce((a, b) => a + b.succeeded, 0);
  const fail = hour.reduce((a, b) => a + b.failed, 0);
  s.appendChild(svg("title", { id: "chart-title" }, `Per minute over the last hour: ${succ} jobs succeeded, ${fail} failures; queue depth now ${hour[hour.length - 1].depth}.`));
  hour.forEach((b, i) => {
    const x = pad + i * bw;
    const ys = y(b.succeeded, maxBar);
    s.appendChild(svg("rect", { x, y: ys, width: Math.max(1, bw - 2), height: H - pad - ys, class: "bar-ok" }));
    if (b.failed) {
      const yf = y(b.succeeded + b.failed, maxBar);
      s.appendChild(svg("rect", { x, y: yf, width: Math.max(1, bw - 2), height: ys - yf, class: "bar-fail" }));
    }
  });
  const pts = hour.map((b, i) => `${pad + i * bw + bw / 2},${y(b.depth, maxDepth)}`).join(" ");
  s.appendChild(svg("polyline", { points: pts, class: "depth-line" }));
  s.appendChild(svg("text", { x: 2, y: 12, class: "axis" }, `max ${maxBar}/min`));
  s.appendChild(svg("text", { x: W - 2, y: 12, class: "axis end" }, `depth max ${maxDepth}`));
  s.appendChild(svg("text", { x: pad, y: H - 6, class: "axis" }, "−60 min"));
  s.appendChild(svg("text", { x: W - 2, y: H - 6, class: "axis end" }, "now"));
  return h(
    "figure",
    {},
    s,
    h("figcaption", {}, h("span", { class: "key ok" }, "succeeded"), " ", h("span", { class: "key fail" }, "failures"), " ", h("span", { class: "key depth" }, "queue depth"), " per minute")
  );
}

function fleetSection(fleet) {
  const rows = fleet.workers.map((w) =>
    h(
      "tr",
      { "data-worker": w.id },
      h("td", {}, w.id),
      h("td", {}, w.host),
      h("td", {}, w.version),
      h("td", {}, w.roles),
      h("td", { class: "mode" }, w.mode),
      h("td", { class: "num" }, `${w.in_flight} / ${w.concurrency}`),
      h("td", {}, fmtAge(w.heartbeat_at)),
      h(
        "td",
        { class: "actions" },
        action("drain-" + w.id, "Drain", async () => {
          await api("POST", `/v1/fleet/workers/${encodeURIComponent(w.id)}/drain`);
          return `Drain sent to ${w.id}.`;
        }, { "aria-label": "Drain " + w.id }),
        action("resume-" + w.id, "Resume", async () => {
          await api("POST", `/v1/fleet/workers/${encodeURIComponent(w.id)}/resume`);
          return `Resume sent to ${w.id}.`;
        }, { "aria-label": "Resume " + w.id })
      )
    )
  );
  return h(
    "section",
    { "aria-labelledby": "fleet-h" },
    h("h2", { id: "fleet-h" }, "Fleet ", h("span", { class: "badge mode-" + fleet.mode, id: "fleet-mode" }, fleet.mode)),
    h(
      "div",
      { class: "toolbar" },
      action("fleet-drain", "Drain fleet", async () => {
        const r = await api("POST", "/v1/fleet/drain");
        return `Drain sent to ${r.addressed} processes.`;
      }),
      action("fleet-resume", "Resume fleet", async () => {
        const r = await api("POST", "/v1/fleet/resume");
        return `Resume sent to ${r.addressed} processes.`;
      })
    ),
    table("Live worker processes", ["worker", "host", "version", "roles", "mode", "in flight", "heartbeat age", "actions"], rows, { id: "fleet" })
  );
}

// ---------------------------------------------------------------- jobs

const JOB_FILTERS = ["state", "kind", "bu_id", "connector", "created_after", "created_before"];
const STATES = ["queued", "running", "retrying", "succeeded", "dead", "cancelled"];

function filterOf(params) {
  const f = {};
  for (const k of JOB_FILTERS) if (params.get(k)) f[k] = params.get(k);
  return f;
}

// datetime-local shows local time; the URL keeps UTC (ISO 8601), so a shared link means
// the same instant for everybody.
function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

function fromLocalInput(v) {
  return v ? new Date(v).toISOString() : "";
}

// A filter form whose submit puts its non-empty fields (times as UTC) and `extra` in the URL.
function filterForm(id, path, keys, extra, ...fields) {
  const submit = (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    const next = new URLSearchParams(extra);
    for (const k of keys) {
      let v = (fd.get(k) || "").trim();
      if (e.target.elements[k] && e.target.elements[k].type === "datetime-local") v = fromLocalInput(v);
      if (v) next.set(k, v);
    }
    go(path, next);
  };
  return h("form", { class: "filters", id, onsubmit: submit }, ...fields);
}

async function jobs(_m, params) {
  const f = filterOf(params);
  const q = new URLSearchParams(f);
  q.set("limit", params.get("limit") || "50");
  if (params.get("cursor")) q.set("cursor", params.get("cursor"));
  const [page, conns] = await Promise.all([api("GET", "/v1/jobs?" + q), connectors()]);
  const liveOn = params.get("live") !== "0";
  const form = filterForm(
    "job-filters",
    "/jobs",
    JOB_FILTERS,
    liveOn ? {} : { live: "0" },
    field("f-state", "State", h("select", { id: "f-state", name: "state" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: f.state === s }, s)))),
    field("f-kind", "Kind", h("input", { id: "f-kind", name: "kind", value: f.kind || "", size: 8 })),
    field("f-bu", "bu_id", h("input", { id: "f-bu", name: "bu_id", value: f.bu_id || "", size: 10 })),
    field("f-connector", "Connector", h("select", { id: "f-connector", name: "connector" }, h("option", { value: "" }, "any"), conns.map((c) => h("option", { value: c.name, selected: f.connector === c.name }, c.name)))),
    field("f-after", "Created from", h("input", { id: "f-after", name: "created_after", type: "datetime-local", value: toLocalInput(f.created_after) })),
    field("f-before", "Created before", h("input", { id: "f-before", name: "created_before", type: "datetime-local", value: toLocalInput(f.created_before) })),
    h("div", { class: "field buttons" }, h("button", { type: "submit", id: "f-apply" }, "Apply"), h("a", { href: "#/jobs", id: "f-reset" }, "Reset"))
  );
  const liveBox = h("input", {
    type: "checkbox",
    id: "live",
    checked: liveOn,
    onchange: (e) => {
      const next = new URLSearchParams(params);
      if (e.target.checked) next.delete("live");
      else next.set("live", "0");
      go("/jobs", next);
    },
  });
  const confirmArea = h("div", { id: "bulk-confirm", role: "region", "aria-live": "polite" });
  const bulk = (what) => async () => {
    const counts = await api("GET", "/v1/jobs/count?" + new URLSearchParams(f));
    const n = what === "cancel" ? counts.cancellable : counts.retryable;
    const noun = what === "cancel" ? "queued, retrying or running" : "dead";
    if (!n) {
      confirmArea.replaceChildren(h("p", {}, `No ${noun} job matches this filter.`));
      return null;
    }
    const body = Object.assign({}, f);
    if (!Object.keys(f).length) body.all = true;
    const confirmBtn = action("bulk-yes", what === "cancel" ? `Cancel ${n} jobs` : `Retry ${n} jobs`, async () => {
      const r = await api("POST", "/v1/jobs/" + what, body);
      confirmArea.replaceChildren();
      return what === "cancel" ? `Cancelled ${r.cancelled} jobs.` : `Retried ${r.retried} jobs.`;
    });
    confirmArea.replaceChildren(
      h(
        "div",
        { class: "confirm" },
        h("p", { id: "bulk-question" }, `${what === "cancel" ? "Cancel" : "Retry"} ${n} ${noun} job${n === 1 ? "" : "s"} matching this filter (of ${counts.matched} matched)?`),
        confirmBtn,
        h("button", { type: "button", id: "bulk-no", onclick: () => confirmArea.replaceChildren() }, "Keep them")
      )
    );
    confirmBtn.focus();
    return null;
  };
  const live = h("div", { "data-live": "" }, jobTable(page, params));
  return {
    title: "Jobs",
    nodes: [
      h("h1", {}, "Jobs"),
      form,
      h(
        "div",
        { class: "toolbar" },
        h("span", { class: "check" }, liveBox, h("label", { for: "live" }, "Live refresh")),
        action("bulk-cancel", "Cancel matching…", bulk("cancel")),
        action("bulk-retry", "Retry matching…", bulk("retry"))
      ),
      confirmArea,
      live,
    ],
    live,
    refresh: liveOn ? REFRESH_MS : null,
  };
}

function jobTable(page, params) {
  const rows = page.jobs.map((j) =>
    h(
      "tr",
      { "data-job-row": j.id },
      h("td", {}, jobLink(j.id)),
      h("td", {}, j.kind),
      h("td", {}, badge(j.state)),
      h("td", {}, j.stage || ""),
      h("td", {}, payloadField(j, "bu_id")),
      h("td", {}, payloadField(j, "connector")),
      h("td", { class: "file-name" }, payloadField(j, "file_name")),
      h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`),
      h("td", {}, fmtTime(j.created_at)),
      h("td", { class: "wrap" }, j.last_error || "")
    )
  );
  const next = new URLSearchParams(params);
  const nav = [];
  if (params.get("cursor")) {
    const first = new URLSearchParams(params);
    first.delete("cursor");
    nav.push(h("a", { href: "#/jobs?" + first, id: "page-first" }, "« Newest"));
  }
  if (page.next_cursor) {
    next.set("cursor", page.next_cursor);
    nav.push(h("a", { href: "#/jobs?" + next, id: "page-next" }, "Older »"));
  }
  return [
    table("Jobs, newest first", ["id", "kind", "state", "stage", "bu_id", "connector", "file", "attempts", "created", "last error"], rows, { id: "jobs" }),
    h("nav", { class: "pager", "aria-label": "Pages" }, nav),
  ];
}

let connectorCache = null;
async function connectors() {
  if (!connectorCache) connectorCache = (await api("GET", "/v1/connectors")).connectors;
  return connectorCache;
}

// ---------------------------------------------------------------- job detail

const rejectedCache = { key: null, page: null };

async function jobDetail(m, params) {
  const id = m[1];
  const job = await api("GET", "/v1/jobs/" + id);
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  let rejected = null;
  if (job.kind === "etl" && job.checkpoint && job.checkpoint.extract) {
    // The artifact is written once per extract: while the page refreshes a running job, the
    // page of rejected rows is read again only when extract's checkpoint (a re-run) changes.
    const key = `${id}:${offset}:${JSON.stringify(job.checkpoint.extract)}`;
    if (rejectedCache.key !== key) {
      try {
        rejectedCache.page = await api("GET", `/v1/jobs/${id}/rejected?offset=${offset}&limit=50`);
        rejectedCache.key = key;
      } catch (e) {
        rejectedCache.page = { error: e.message };
      }
    }
    rejected = rejectedCache.page;
  }
  const final = ["succeeded", "dead", "cancelled"].includes(job.state);
  const actions = h("div", { class: "toolbar" });
  if (!final) {
    actions.appendChild(action("job-cancel", "Cancel job", async () => {
      await api("POST", `/v1/jobs/${id}/cancel`);
      return `Job ${id} cancelled.`;
    }));
  }
  if (job.state === "dead") {
    actions.appendChild(action("job-retry", "Retry from checkpoint", async () => {
      await api("POST", `/v1/jobs/${id}/retry?from=checkpoint`);
      return `Job ${id} queued again from its checkpoint.`;
    }));
    actions.appendChild(action("job-retry-start", "Retry from start", async () => {
      await api("POST", `/v1/jobs/${id}/retry?from=start`);
      return `Job ${id} queued again from the first stage.`;
    }));
  }
  // The whole page is live: the state, and so the actions offered, change as the job runs.
  const live = h("div", { "data-live": "" }, h("h1", {}, "Job #" + id + " ", badge(job.state)), actions, jobBody(job, rejected, offset, params));
  return {
    title: "Job " + id,
    nodes: [live],
    live,
    refresh: final ? null : 1000,
  };
}

function jobBody(job, rejected, offset, params) {
  const file = payloadField(job, "file_name");
  const facts = [
    ["state", badge(job.state)],
    ["kind", job.kind],
    ["stage", job.stage || (job.state === "succeeded" ? "(all done)" : "")],
    ["attempts", `${job.attempts} of ${job.max_attempts}`],
    ["bu_id", payloadField(job, "bu_id")],
    ["connector", payloadField(job, "connector")],
    ["file", file],
    ["created", fmtTime(job.created_at)],
    ["started", fmtTime(job.started_at)],
    ["finished", fmtTime(job.finished_at)],
    ["lease owner", job.lease_owner || ""],
  ].filter(([, v]) => v !== "");
  const out = [
    h("dl", { class: "facts", id: "job-facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)])),
  ];
  if (job.last_error) {
    out.push(h("section", { "aria-labelledby": "err-h" }, h("h2", { id: "err-h" }, "Last error"), h("pre", { class: "error", id: "last-error" }, job.last_error)));
  }
  if (job.state === "running" && job.progress) out.push(progress(job));
  out.push(timeline(job));
  if (job.report) out.push(report(job.report));
  if (rejected) out.push(rejectedSection(job, rejected, offset, params));
  if (job.kind === "etl" && job.checkpoint && job.checkpoint.extract) {
    out.push(
      h(
        "section",
        { "aria-labelledby": "dl-h" },
        h("h2", { id: "dl-h" }, "Artifacts"),
        h("ul", { class: "downloads" }, ["records.ndjson", "rejected.ndjson", "report.json"].map((n) => h("li", {}, downloadLink(`/v1/jobs/${job.id}/artifacts/${n}`, `job-${job.id}-${n}`, n))))
      )
    );
  }
  out.push(h("section", { "aria-labelledby": "cp-h" }, h("h2", { id: "cp-h" }, "Checkpoint"), h("pre", { id: "checkpoint" }, JSON.stringify(job.checkpoint, null, 2))));
  return out;
}

function progress(job) {
  const p = job.progress;
  const done = p.rows_written !== undefined ? p.rows_written : p.rows_read;
  const total = p.rows_total;
  const label = `${p.stage}: ${done !== undefined ? done : "?"}${total ? " of " + total : ""} rows`;
  const bar = total ? h("progress", { id: "stage-progress", max: total, value: done || 0 }) : h("progress", { id: "stage-progress" });
  return h("section", { "aria-labelledby": "prog-h" }, h("h2", { id: "prog-h" }, "Progress"), h("label", { for: "stage-progress" }, label), bar);
}

function timeline(job) {
  const events = job.history || [];
  const stages = events.filter((e) => e.event === "stage_completed" && e.duration_ms !== null);
  const total = stages.reduce((a, e) => a + e.duration_ms, 0) || 1;
  const bars = h(
    "div",
    { class: "stagebar", id: "stage-bar", role: "img", "aria-label": "Time per stage: " + stages.map((e) => `${e.stage} ${fmtMs(e.duration_ms)}`).join(", ") },
    stages.map((e, i) => {
      const seg = h("span", { class: "seg seg-" + (i % 4), title: `${e.stage}: ${fmtMs(e.duration_ms)}` }, e.stage);
      seg.style.width = Math.max(4, (100 * e.duration_ms) / total) + "%";
      return seg;
    })
  );
  const rows = events.map((e) =>
    h(
      "tr",
      { "data-event": e.event },
      h("td", {}, fmtTime(e.at)),
      h("td", {}, e.event),
      h("td", {}, e.stage || ""),
      h("td", {}, [e.from_state, e.to_state].filter(Boolean).join(" → ")),
      h("td", { class: "num" }, e.attempt === null ? "" : String(e.attempt)),
      h("td", {}, e.worker_id || ""),
      h("td", {}, e.worker_version || ""),
      h("td", { class: "num" }, fmtMs(e.duration_ms)),
      h("td", { class: "wrap" }, e.error || "")
    )
  );
  return h(
    "section",
    { "aria-labelledby": "tl-h" },
    h("h2", { id: "tl-h" }, "Timeline"),
    stages.length ? bars : null,
    table("Events, oldest first", ["at", "event", "stage", "state", "attempt", "worker", "version", "duration", "error"], rows, { id: "timeline" })
  );
}

function report(r) {
  const entries = Object.entries(r).filter(([, v]) => v === null || typeof v !== "object");
  return h(
    "section",
    { "aria-labelledby": "rep-h" },
    h("h2", { id: "rep-h" }, "Extract report"),
    h("dl", { class: "facts", id: "report" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-report": k }, v === null ? "" : String(v))]))
  );
}

function rejectedSection(job, rej, offset, params) {
  if (rej.error) return h("section", {}, h("h2", {}, "Rejected rows"), h("p", {}, rej.error));
  const rows = rej.rejected.map((r) =>
    h("tr", {}, h("td", {}, r.sheet), h("td", { class: "num" }, String(r.row)), h("td", {}, r.column || ""), h("td", {}, r.value === undefined || r.value === null ? "" : String(r.value)), h("td", { class: "wrap" }, r.reason))
  );
  const nav = [];
  const at = (o) => {
    const p = new URLSearchParams(params);
    p.set("offset", String(o));
    return `#/jobs/${job.id}?${p}`;
  };
  if (offset > 0) nav.push(h("a", { href: at(Math.max(0, offset - rej.limit)), id: "rej-prev" }, "« Previous"));
  if (offset + rej.limit < rej.total) nav.push(h("a", { href: at(offset + rej.limit), id: "rej-next" }, "Next »"));
  const shown = rej.total ? `${offset + 1}–${Math.min(rej.total, offset + rej.rejected.length)} of ${rej.total}` : "none";
  return h(
    "section",
    { "aria-labelledby": "rej-h" },
    h("h2", { id: "rej-h" }, "Rejected rows ", h("span", { class: "muted", id: "rejected-count" }, "(" + shown + ")")),
    table("Rows the extract rejected", ["sheet", "row", "column", "value", "reason"], rows, { id: "rejected" }),
    h("nav", { class: "pager", "aria-label": "Rejected pages" }, nav, " ", downloadLink(`/v1/jobs/${job.id}/artifacts/rejected.ndjson`, `job-${job.id}-rejected.ndjson`, "Download all (NDJSON)", "rej-download"))
  );
}

// ---------------------------------------------------------------- dead letters

const DL_FILTERS = ["kind", "bu_id", "connector", "since"];

async function deadLetters(_m, params) {
  const f = {};
  for (const k of DL_FILTERS) if (params.get(k)) f[k] = params.get(k);
  const q = new URLSearchParams(f);
  q.set("limit", "100");
  if (params.get("cursor")) q.set("cursor", params.get("cursor"));
  const page = await api("GET", "/v1/dead-letters?" + q);
  const form = filterForm(
    "dl-filters",
    "/dead-letters",
    DL_FILTERS,
    {},
    field("dl-kind", "Kind", h("input", { id: "dl-kind", name: "kind", value: f.kind || "", size: 8 })),
    field("dl-bu", "bu_id", h("input", { id: "dl-bu", name: "bu_id", value: f.bu_id || "", size: 10 })),
    field("dl-connector", "Connector", h("input", { id: "dl-connector", name: "connector", value: f.connector || "", size: 10 })),
    field("dl-since", "Dead since", h("input", { id: "dl-since", name: "since", type: "datetime-local", value: toLocalInput(f.since) })),
    h("div", { class: "field buttons" }, h("button", { type: "submit", id: "dl-apply" }, "Apply"), h("a", { href: "#/dead-letters" }, "Reset"))
  );
  const confirmArea = h("div", { id: "dl-confirm", "aria-live": "polite" });
  const bulk = action("dl-retry-all", "Retry all matching…", async () => {
    const n = page.total;
    if (!n) {
      confirmArea.replaceChildren(h("p", {}, "No open dead letter matches this filter."));
      return null;
    }
    const body = Object.assign({}, f);
    if (!Object.keys(f).length) body.all = true;
    const yes = action("dl-retry-yes", `Retry ${n} jobs`, async () => {
      const r = await api("POST", "/v1/dead-letters/retry", body);
      confirmArea.replaceChildren();
      return `Retried ${r.retried} jobs.`;
    });
    confirmArea.replaceChildren(h("div", { class: "confirm" }, h("p", {}, `Retry ${n} dead job${n === 1 ? "" : "s"} matching this filter from their checkpoints?`), yes, h("button", { type: "button", onclick: () => confirmArea.replaceChildren() }, "Keep them")));
    yes.focus();
    return null;
  });
  const rows = page.dead_letters.map((d) =>
    h(
      "tr",
      { "data-dead-job": d.job_id },
      h("td", {}, jobLink(d.job_id)),
      h("td", {}, d.kind),
      h("td", {}, d.bu_id || ""),
      h("td", {}, d.connector || ""),
      h("td", {}, d.failed_stage || ""),
      h("td", { class: "num" }, String(d.attempts)),
      h("td", { class: "wrap" }, d.reason),
      h("td", {}, fmtTime(d.dead_at)),
      h(
        "td",
        { class: "actions" },
        action("retry-" + d.job_id, "Retry", async () => {
          await api("POST", `/v1/dead-letters/${d.job_id}/retry?from=checkpoint`);
          return `Job ${d.job_id} queued again from its checkpoint.`;
        }, { "aria-label": `Retry job ${d.job_id} from its checkpoint` }),
        action("retry-start-" + d.job_id, "From start", async () => {
          await api("POST", `/v1/dead-letters/${d.job_id}/retry?from=start`);
          return `Job ${d.job_id} queued again from the first stage.`;
        }, { "aria-label": `Retry job ${d.job_id} from the start` })
      )
    )
  );
  const nav = [];
  if (page.next_cursor) {
    const next = new URLSearchParams(params);
    next.set("cursor", page.next_cursor);
    nav.push(h("a", { href: "#/dead-letters?" + next }, "Older »"));
  }
  const live = h(
    "div",
    { "data-live": "" },
    h("p", { id: "dl-total" }, `${page.total} open dead letter${page.total === 1 ? "" : "s"} match.`),
    table("Open dead letters, newest first", ["job", "kind", "bu_id", "connector", "failed stage", "attempts", "reason", "dead at", "retry"], rows, { id: "dead-letters" }),
    h("nav", { class: "pager", "aria-label": "Pages" }, nav)
  );
  return {
    title: "Dead letters",
    nodes: [h("h1", {}, "Dead letters"), form, h("div", { class: "toolbar" }, bulk), confirmArea, live],
    live,
    refresh: REFRESH_MS * 2,
  };
}

// ---------------------------------------------------------------- datasets

async function datasets() {
  const d = await api("GET", "/v1/datasets");
  const details = await Promise.all(d.datasets.map((ds) => api("GET", `/v1/datasets/${encodeURIComponent(ds.bu_id)}/${encodeURIComponent(ds.connector)}`)));
  const sections = d.datasets.map((ds, i) => datasetSection(ds, details[i]));
  return {
    title: "Datasets",
    nodes: [h("h1", {}, "Datasets"), h("p", {}, "Cache counter: ", h("strong", { id: "cache-counter" }, String(d.cache_counter))), sections.length ? sections : h("p", {}, "No dataset has been promoted yet.")],
  };
}

function diffLink(ds, from, to, label) {
  const q = new URLSearchParams({ from: String(from), to: String(to) });
  return h("a", { href: `#/datasets/${encodeURIComponent(ds.bu_id)}/${encodeURIComponent(ds.connector)}/diff?${q}`, "data-diff": `${from}-${to}` }, label || "changes");
}

function datasetSection(ds, detail) {
  const base = `/v1/datasets/${encodeURIComponent(ds.bu_id)}/${encodeURIComponent(ds.connector)}`;
  const kept = new Set(detail.kept_versions.map((k) => k.version).concat([ds.version]));
  const confirmArea = h("div", { class: "rollback-confirm", role: "region", "aria-live": "polite" });
  const ask = (version) => {
    const reason = h("input", { id: "rollback-reason", type: "text", maxlength: 500, placeholder: "why (kept in the audit log)" });
    const yes = action("rollback-yes", `Roll back to ${version}`, async () => {
      const why = reason.value.trim();
      if (!why) throw new Error("Say why first: the reason goes to the audit log.");
      const r = await api("POST", base + "/rollback", { version, reason: why });
      confirmArea.replaceChildren();
      return r.changed ? `Rolled back to version ${version} (generation ${r.manifest.generation}).` : `Version ${version} was already promoted.`;
    });
    confirmArea.replaceChildren(
      h("div", { class: "confirm" }, h("p", {}, `Point ${ds.bu_id} / ${ds.connector} back at version ${version}? Readers see it at once; version ${ds.version} stays kept for ${detail.retention_hours} h.`), field("rollback-reason", "Reason", reason), yes, h("button", { type: "button", id: "rollback-no", onclick: () => confirmArea.replaceChildren() }, "Keep the current version"))
    );
    reason.focus();
  };
  return h(
    "section",
    { class: "dataset", "data-dataset": `${ds.bu_id}/${ds.connector}` },
    h("h2", {}, ds.bu_id, " / ", ds.connector),
    h(
      "dl",
      { class: "facts" },
      [
        ["promoted version", String(ds.version)],
        ["records", String(ds.records)],
        ["generation", String(ds.generation)],
        ["promoted at", fmtTime(ds.promoted_at)],
        ["checksum (order-independent)", ds.checksum],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", k.startsWith("checksum") ? { title: CHECKSUM_MEANS } : {}, v)])
    ),
    table(
      "Recent promotions, newest first",
      ["job", "outcome", "previous version", "cache counter", "promoted at", "changes"],
      ds.recent.map((p) => h("tr", {}, h("td", {}, jobLink(p.job_id)), h("td", {}, p.outcome), h("td", { class: "num" }, p.previous_version === null ? "" : String(p.previous_version)), h("td", { class: "num" }, String(p.cache_counter)), h("td", {}, fmtTime(p.promoted_at)), h("td", {}, p.outcome === "promoted" && p.previous_version !== null && kept.has(p.previous_version) && kept.has(p.job_id) ? diffLink(ds, p.previous_version, p.job_id) : "")))
    ),
    table(
      "Kept versions: roll back to one within its window",
      ["version", "records", "replaced by", "restorable until", ""],
      detail.kept_versions.map((k) => h("tr", {}, h("td", { class: "num" }, String(k.version)), h("td", { class: "num" }, k.records === null ? "" : String(k.records)), h("td", { class: "num" }, String(k.superseded_by)), h("td", {}, fmtTime(k.restorable_until)), h("td", {}, h("button", { type: "button", "data-rollback": String(k.version), onclick: () => ask(k.version) }, "Roll back"), " ", diffLink(ds, k.version, ds.version, "changes since"))))
    ),
    detail.rollbacks.length ? table("Rollbacks, newest first", ["generation", "from", "to", "by", "reason", "at"], detail.rollbacks.map((r) => h("tr", {}, h("td", { class: "num" }, String(r.generation)), h("td", { class: "num" }, String(r.from_version)), h("td", { class: "num" }, String(r.to_version)), h("td", {}, r.actor), h("td", {}, r.reason), h("td", {}, fmtTime(r.at))))) : null,
    confirmArea
  );
}

async function datasetDiff(m, params) {
  const [bu, conn] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
  const q = new URLSearchParams();
  for (const k of ["from", "to", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("limit", "50");
  const d = await api("GET", `/v1/datasets/${encodeURIComponent(bu)}/${encodeURIComponent(conn)}/diff?${q}`);
  const c = d.counts;
  const rows = [];
  for (const ch of d.changes) {
    if (ch.change === "changed") {
      for (const f of ch.fields) rows.push(h("tr", { class: "changed" }, h("td", {}, "changed"), h("td", { class: "mono" }, ch.id), h("td", {}, f.field), h("td", {}, f.old === null ? "" : String(f.old)), h("td", {}, f.new === null ? "" : String(f.new))));
    } else {
      rows.push(h("tr", { class: ch.change }, h("td", {}, ch.change), h("td", { class: "mono" }, ch.id), h("td", { colspan: 3 }, JSON.stringify(ch.record))));
    }
  }
  let next = null;
  if (d.next_cursor) {
    const p = new URLSearchParams({ from: String(d.from), to: String(d.to), cursor: d.next_cursor });
    next = h("a", { id: "diff-next", href: `#/datasets/${encodeURIComponent(bu)}/${encodeURIComponent(conn)}/diff?${p}` }, "Next changes");
  }
  return {
    title: "Changes",
    nodes: [
      h("h1", {}, `Changes in ${bu} / ${conn}: version ${d.from} → ${d.to}`),
      h("p", { id: "diff-counts" }, `${c.added} added, ${c.removed} removed, ${c.changed} changed, ${c.unchanged} unchanged`),
      table("Changed records (old → new)", ["change", "document id", "field", "old", "new"], rows),
      next,
      h("p", {}, h("a", { href: "#/datasets" }, "Back to datasets")),
    ],
  };
}

// ---------------------------------------------------------------- sources

function counts(r) {
  return r ? `${r.listed} / ${r.new} / ${r.duplicate} / ${r.skipped}` : "";
}

function sourceState(s) {
  if (!s.enabled) return "disabled";
  if (s.paused) return "paused";
  return s.listing_now ? "listing" : "active";
}

function sourceActions(s, base) {
  const path = "/v1/sources/" + encodeURIComponent(s.name);
  const out = [
    action(base + "-tick", "Tick now", async () => {
      const r = await api("POST", path + "/tick");
      return `Listing of ${s.name} requested; a worker takes it through the slot (runs after #${r.after_run_id}).`;
    }, { "aria-label": "List " + s.name + " now" }),
  ];
  if (s.paused) {
    out.push(action(base + "-resume", "Resume", async () => {
      await api("POST", path + "/resume");
      return `Source ${s.name} resumed.`;
    }, { "aria-label": "Resume " + s.name }));
  } else {
    out.push(action(base + "-pause", "Pause", async () => {
      await api("POST", path + "/pause");
      return `Source ${s.name} paused.`;
    }, { "aria-label": "Pause " + s.name }));
  }
  return out;
}

async function sources() {
  const d = await api("GET", "/v1/sources");
  const rows = d.sources.map((s) =>
    h(
      "tr",
      { "data-source": s.name },
      h("td", {}, h("a", { href: "#/sources/" + s.name }, s.name)),
      h("td", {}, s.kind),
      h("td", {}, s.prefix),
      h("td", {}, s.connector),
      h("td", {}, [s.schedule || "on request", s.timezone ? " (" + s.timezone + ")" : ""].join("")),
      h("td", {}, badge(sourceState(s))),
      h("td", {}, fmtTime(s.next_tick)),
      h("td", {}, s.last_run ? fmtTime(s.last_run.started_at) : ""),
      h("td", { class: "num" }, counts(s.last_run)),
      h("td", { class: "num" }, String(s.ledger_rows)),
      h("td", { class: "actions" }, sourceActions(s, "source-" + s.name))
    )
  );
  const live = h(
    "div",
    { "data-live": "" },
    table("Sources", ["source", "kind", "prefix", "connector", "schedule", "state", "next tick", "last run", "listed / new / dup / skipped", "ledger", "actions"], rows, { id: "sources" })
  );
  return {
    title: "Sources",
    nodes: [h("h1", {}, "Sources"), h("p", {}, "Files that arrive by themselves: watched prefixes and Event Grid. Each blob version becomes one job."), live],
    live,
    refresh: REFRESH_MS,
  };
}

async function sourceDetail(m, params) {
  const name = m[1];
  const path = "/v1/sources/" + encodeURIComponent(name);
  const q = new URLSearchParams();
  for (const k of ["found_by", "bu_id", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  const [s, ledger] = await Promise.all([api("GET", path), api("GET", path + "/ledger?" + q)]);
  const runs = s.runs.map((r) =>
    h(
      "tr",
      { "data-run": r.id },
      h("td", { class: "num" }, String(r.id)),
      h("td", {}, r.trigger),
      h("td", {}, fmtTime(r.slot)),
      h("td", {}, r.worker_id || ""),
      h("td", {}, r.outcome ? badge(r.outcome) : "running"),
      h("td", { class: "num" }, counts(r)),
      h("td", { class: "wrap" }, Object.entries(r.reasons || {}).map(([k, v]) => `${k}: ${v.count} (${v.examples.join(", ")})`).join("; ")),
      h("td", { class: "wrap" }, r.error || "")
    )
  );
  const entries = ledger.ledger.map((e) =>
    h(
      "tr",
      { "data-ledger": e.id },
      h("td", { class: "num" }, String(e.id)),
      h("td", { class: "file-name" }, e.blob_key),
      h("td", {}, e.etag),
      h("td", { class: "num" }, String(e.size)),
      h("td", {}, e.found_by),
      h("td", {}, fmtTime(e.found_at)),
      h("td", {}, e.bu_id),
      h("td", {}, e.job_id === null ? "" : jobLink(e.job_id)),
      h("td", {}, e.job_state ? badge(e.job_state) : ""),
      h("td", { class: "num" }, fmtMs(e.lag_ms))
    )
  );
  const nav = [];
  if (ledger.next_cursor) {
    const next = new URLSearchParams(q);
    next.set("cursor", ledger.next_cursor);
    nav.push(h("a", { href: "#/sources/" + name + "?" + next, id: "ledger-next" }, "Older »"));
  }
  const live = h(
    "div",
    { "data-live": "" },
    h(
      "dl",
      { class: "facts" },
      [
        ["kind", s.kind],
        ["prefix", s.prefix],
        ["connector", s.connector],
        ["schedule", (s.schedule || "on request") + (s.timezone ? " (" + s.timezone + ")" : "")],
        ["state", sourceState(s)],
        ["next tick", fmtTime(s.next_tick)],
        ["ledger rows", String(s.ledger_rows)],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])
    ),
    h("div", { class: "actions" }, sourceActions(s, "source")),
    table("Ingest ledger, newest first", ["id", "blob", "etag", "bytes", "found by", "found at", "bu_id", "job", "job state", "lag"], entries, { id: "ledger" }),
    h("nav", { class: "pager", "aria-label": "Ledger pages" }, nav),
    table("Runs (listings and Event Grid deliveries), newest first", ["run", "trigger", "slot", "worker", "outcome", "listed / new / dup / skipped", "skipped because", "error"], runs, { id: "runs" })
  );
  return { title: "Source " + name, nodes: [h("h1", {}, "Source ", name), live], live, refresh: REFRESH_MS };
}

// ---------------------------------------------------------------- upload

async function upload() {
  const conns = await connectors();
  const status = h("div", { id: "upload-status", "aria-live": "polite" });
  const panel = h("section", { id: "preview", "aria-live": "polite" });
  const previewButton = h("button", { type: "button", id: "u-preview" }, "Preview");
  const form = h(
    "form",
    { id: "upload-form", class: "upload" },
    field("u-file", "Export (workbook, CSV/TSV, HTML table)", h("input", { id: "u-file", name: "file", type: "file", required: true, accept: ".xlsx,.xlsm,.xls,.xlsb,.ods,.csv,.tsv,.txt,.htm,.html" })),
    field("u-bu", "bu_id", h("input", { id: "u-bu", name: "bu_id", required: true, size: 12 })),
    field("u-connector", "Connector", h("select", { id: "u-connector", name: "connector", required: true }, conns.map((c) => h("option", { value: c.name }, `${c.name} (${c.kind})`)))),
    h("div", { class: "field buttons" }, previewButton, " ", h("button", { type: "submit", id: "u-submit" }, "Upload"))
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sendUpload(form, status);
  });
  previewButton.addEventListener("click", () => preview(form, panel, previewButton));
  return { title: "Upload", nodes: [h("h1", {}, "Upload an export"), form, status, panel] };
}

// What the upload would give, before any job: nothing is stored (POST …/preview).
async function preview(form, panel, button) {
  const file = form.querySelector("#u-file").files[0];
  const name = form.querySelector("#u-connector").value;
  if (!file) {
    panel.replaceChildren(h("p", { id: "preview-verdict", class: "error" }, "Choose a file to preview first."));
    return;
  }
  const data = new FormData();
  data.append("file", file, file.name);
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  button.disabled = true;
  panel.replaceChildren(h("p", { id: "preview-verdict" }, "Previewing…"));
  let p;
  try {
    const resp = await fetch("/v1/connectors/" + encodeURIComponent(name) + "/preview", { method: "POST", headers, body: data, credentials: "omit" });
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (!resp.ok) throw apiError(resp.status, body);
    p = body;
  } catch (e) {
    panel.replaceChildren(h("p", { id: "preview-verdict", class: "error" }, e.message));
    return;
  } finally {
    button.disabled = false;
  }
  const f = p.format || {};
  const facts = [
    ["format", [f.format, f.encoding, f.delimiter && "delimiter " + JSON.stringify(f.delimiter)].filter(Boolean).join(", ") || "—"],
    ["sheet", p.sheet || "—"],
    ["header row", p.header_row ? String(p.header_row) : "not found"],
    ["records", String(p.records)],
    ["rejected", `${p.rejected_rows} (${(100 * p.rejected_ratio).toFixed(1)}% of at most ${(100 * p.max_rejected_ratio).toFixed(1)}%)`],
  ];
  const cols = (p.columns || []).map((c) =>
    h(
      "tr",
      {},
      h("td", {}, c.name),
      h("td", {}, c.header),
      h("td", {}, c.column ? `${c.column}: ${c.found}` : c.required ? h("strong", { class: "error" }, "missing") : "absent (optional)"),
      h("td", {}, c.nearest ? "nearest: " + c.nearest : "")
    )
  );
  const names = (p.columns || []).map((c) => c.name);
  const rows = (p.rows || []).map((r) => h("tr", {}, names.map((n) => h("td", {}, r[n] === null || r[n] === undefined ? "" : String(r[n])))));
  const rejections = (p.rejections || []).map((r) => h("tr", {}, h("td", {}, String(r.row)), h("td", {}, r.column), h("td", {}, r.value), h("td", {}, r.reason)));
  panel.replaceChildren(
    h("h2", {}, "Preview with ", p.connector),
    h("p", { id: "preview-verdict", class: p.would_succeed ? "ok" : "error" }, p.verdict),
    h("dl", { class: "facts", id: "preview-facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    table("Which header matched which column", ["column", "header", "found", ""], cols, { id: "preview-columns" }),
    table(`First ${rows.length} records, typed`, names, rows, { id: "preview-rows" }),
    table(`First ${rejections.length} rejections`, ["row", "column", "value", "reason"], rejections, { id: "preview-rejections" })
  );
}

// XMLHttpRequest, not fetch: it reports upload progress.
function sendUpload(form, status) {
  const data = new FormData(form);
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0 });
  const said = h("p", { id: "upload-said" }, "Uploading…");
  status.replaceChildren(h("label", { for: "upload-progress" }, "Upload"), bar, said);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/uploads");
  xhr.withCredentials = false;
  if (token()) xhr.setRequestHeader("Authorization", "Bearer " + token());
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
  };
  xhr.onerror = () => {
    said.textContent = "The upload failed: the server could not be reached.";
    said.className = "error";
  };
  xhr.onload = () => {
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (_) {
      body = null;
    }
    if (xhr.status !== 202 && xhr.status !== 200) {
      said.textContent = apiError(xhr.status, body).message;
      said.className = "error";
      return;
    }
    bar.value = 100;
    watchJob(body.job_id, status);
  };
  xhr.send(data);
}

async function watchJob(id, status) {
  const line = h("p", { id: "upload-job" }, "Job ", jobLink(id), " ", h("span", { id: "upload-state" }, "queued"), " ", h("span", { id: "upload-stage" }));
  const bar = h("progress", { id: "job-progress", max: 4, value: 0 });
  status.append(line, h("label", { for: "job-progress" }, "Stages done"), bar);
  const tick = async () => {
    if (!document.body.contains(line)) return; // the operator went elsewhere
    let job;
    try {
      job = await api("GET", "/v1/jobs/" + id);
    } catch (e) {
      setTimeout(tick, 1000);
      return;
    }
    const done = Object.keys(job.checkpoint || {}).length;
    bar.max = job.stages.length || 4;
    bar.value = done;
    line.querySelector("#upload-state").replaceChildren(badge(job.state));
    const p = job.progress;
    line.querySelector("#upload-stage").textContent = job.stage ? `stage ${job.stage}${p && p.stage === job.stage ? ` (${p.rows_written !== undefined ? p.rows_written : p.rows_read} rows)` : ""}` : "";
    if (["succeeded", "dead", "cancelled"].includes(job.state)) {
      if (job.last_error && job.state !== "succeeded") status.append(h("pre", { class: "error" }, job.last_error));
      return;
    }
    setTimeout(tick, 500);
  };
  tick();
}

// ---------------------------------------------------------------- start

function showToken() {
  document.getElementById("token-state").textContent = token() ? "token set for this tab" : "no token: read-only";
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    const v = input.value.trim();
    if (v) sessionStorage.setItem(TOKEN_KEY, v);
    input.value = "";
    showToken();
    toast(v ? "Token kept for this browser tab until it closes." : "Enter a token first.", v ? "ok" : "error");
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
    toast("Token forgotten.", "ok");
  });
  document.getElementById("skip-link").addEventListener("click", (e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  showToken();
  window.addEventListener("hashchange", () => {
    toast("");
    render(false);
  });
  render(false);
});
