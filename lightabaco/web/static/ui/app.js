// lightabaco dashboard: plain JavaScript over the REST API. The token lives in sessionStorage only and
// is sent as an Authorization header (never in a URL). Everything shown is written with textContent,
// never innerHTML, so names, logs and messages cannot inject markup.
"use strict";

const KEY = "lightabaco.token";
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem(KEY) || "", admin: false, stream: null };

// -- small DOM helpers -----------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const field = (obj, snake) => {
  if (!obj) return undefined;
  if (snake in obj) return obj[snake];
  const camel = snake.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  return obj[camel];
};
const statusSpan = (s) => el("span", { class: "status s-" + String(s || "").split(" ")[0], text: s || "" });
const fmt = (v) => (v === null || v === undefined || v === "" ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));
const enc = encodeURIComponent;

function notice(text, ok) {
  const box = $("notice");
  box.replaceChildren(el("p", { class: ok ? "ok" : "err", text }));
  if (ok) setTimeout(() => { if (box.textContent === text) box.replaceChildren(); }, 6000);
}

function table(headers, rows, caption) {
  return el("div", { class: "scroll" }, el("table", {},
    caption ? el("caption", { class: "muted", text: caption }) : null,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : null, text: h.label || h })))),
    el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, r.map((c, i) =>
      el("td", { class: headers[i] && headers[i].num ? "num" : null }, c instanceof Node ? c : fmt(c)))))
      : el("tr", {}, el("td", { colspan: headers.length, class: "muted", text: "Nothing here yet." })))));
}

function props(pairs) {
  return el("dl", { class: "props" }, pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v instanceof Node ? v : fmt(v))]));
}

// -- the API ------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, opts = {}) {
  const headers = { Authorization: "Bearer " + state.token };
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) { payload = body; headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, { method, headers, body: payload, signal: opts.signal });
  if (opts.raw) return r;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) throw new ApiError(r.status, (data && data.message) || text || r.statusText);
  return data ? data.result : null;
}

// -- sign in --------------------------------------------------------------------------------------------
async function signIn(token) {
  state.token = token;
  await api("GET", "/actors");  // throws on a bad token
  sessionStorage.setItem(KEY, token);
  try { await api("GET", "/actors/admin/users"); state.admin = true; } catch (_) { state.admin = false; }
}

function signOut() {
  stopStream();
  sessionStorage.removeItem(KEY);
  state.token = ""; state.admin = false;
  location.hash = "";
  render();
}

// -- views ------------------------------------------------------------------------------------------------
function show(title, ...children) {
  const view = $("view");
  view.replaceChildren(el("h1", { text: title }), ...children);
  view.hidden = false;
  document.title = title + " — lightabaco";
}

async function actorsView() {
  const actors = (await api("GET", "/actors")) || [];
  const rows = await Promise.all(actors.map(async (a) => {
    const id = field(a, "id");
    const [workers, queued] = await Promise.all([
      api("GET", `/actors/${enc(id)}/workers`).then((w) => (w || []).length).catch(() => "?"),
      api("GET", `/actors/${enc(id)}/messages`).then((m) => field(m, "messages")).catch(() => "?"),
    ]);
    return [el("a", { href: `#/actors/${enc(id)}`, text: id }), field(a, "name"), statusSpan(field(a, "status")),
      field(a, "image"), workers, queued, field(a, "owner")];
  }));
  show("Actors",
    table(["Id", "Name", "Status", "Image", { label: "Workers", num: true }, { label: "Queued", num: true }, "Owner"], rows),
    el("h2", { text: "Register an actor" }), actorForm(null));
}

function actorForm(actor) {
  const id = actor ? field(actor, "id") : null;
  const p = id ? "u-" : "r-";
  const env = actor ? field(actor, "default_environment") : {};
  const form = el("form", { id: p + "form" },
    el("div", { class: "row" },
      el("div", {}, el("label", { for: p + "image", text: "Image" }),
        el("input", { id: p + "image", name: "image", required: true, value: actor ? field(actor, "image") : "", placeholder: "abacosamples/test" })),
      id ? null : el("div", {}, el("label", { for: p + "name", text: "Name (optional)" }), el("input", { id: p + "name", name: "name" })),
      el("div", {}, el("label", { for: p + "description", text: "Description" }),
        el("input", { id: p + "description", name: "description", value: actor ? field(actor, "description") || "" : "" }))),
    el("div", { class: "row" },
      el("div", {}, el("label", { class: "inline", for: p + "stateless" },
        el("input", { id: p + "stateless", type: "checkbox", name: "stateless", checked: actor ? !!field(actor, "stateless") : true }),
        "Stateless (a pool of workers; untick for one worker, ordered messages and a state document)")),
      el("div", {}, el("label", { for: p + "cron", text: "Cron schedule (optional)" }),
        el("input", { id: p + "cron", name: "cron_schedule", value: actor ? field(actor, "cron_schedule") || "" : "", placeholder: "2030-01-01 12 + 1 hour" }))),
    el("label", { for: p + "env", text: "Default environment (JSON object, optional)" }),
    el("textarea", { id: p + "env", name: "default_environment", rows: 3 }, env && Object.keys(env).length ? JSON.stringify(env, null, 2) : ""),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", text: id ? "Update actor" : "Register actor" })));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { image: form.image.value.trim(), description: form.description.value, stateless: form.stateless.checked };
    if (!id && form.name.value.trim()) body.name = form.name.value.trim();
    if (form.cron_schedule.value.trim()) { body.cron_schedule = form.cron_schedule.value.trim(); body.cron_on = true; }
    if (form.default_environment.value.trim()) {
      try { body.default_environment = JSON.parse(form.default_environment.value); }
      catch (e) { notice("Default environment is not valid JSON: " + e.message, false); return; }
    }
    try {
      const made = await api(id ? "PUT" : "POST", id ? `/actors/${enc(id)}` : "/actors", body);
      notice(id ? `Actor ${id} updated.` : `Actor ${field(made, "id")} registered.`, true);
      location.hash = `#/actors/${enc(field(made, "id"))}`;
      if (id) route();
    } catch (e) { notice(e.message, false); }
  });
  return form;
}

function messageForm(id) {
  const form = el("form", { id: "msg-form" },
    el("fieldset", {}, el("legend", { text: "Message kind" }),
      ["string", "json", "file"].map((k) => el("label", { class: "inline", for: "kind-" + k },
        el("input", { type: "radio", name: "kind", id: "kind-" + k, value: k, checked: k === "string" }),
        { string: "Text", json: "JSON", file: "File (binary)" }[k]))),
    el("label", { for: "msg-text", text: "Message" }),
    el("textarea", { id: "msg-text", name: "text", rows: 3 }),
    el("label", { for: "msg-file", text: "File (for a binary message)" }),
    el("input", { id: "msg-file", name: "file", type: "file" }),
    el("div", { class: "actions" },
      el("label", { class: "inline", for: "msg-sync" }, el("input", { id: "msg-sync", type: "checkbox", name: "sync" }),
        "Wait for the answer (synchronous)"),
      el("button", { type: "submit", class: "primary", text: "Send" })),
    el("div", { id: "msg-answer", "aria-live": "polite" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const kind = form.kind.value;
    let body;
    if (kind === "file") {
      if (!form.file.files.length) { notice("Choose a file to send as a binary message.", false); return; }
      body = form.file.files[0];
    } else if (kind === "json") {
      try { body = JSON.parse(form.text.value); } catch (e) { notice("The message is not valid JSON: " + e.message, false); return; }
      if (typeof body !== "object" || body === null) body = { message: form.text.value };
    } else body = { message: form.text.value };
    const sync = form.sync.checked;
    const answer = $("msg-answer");
    answer.replaceChildren(el("p", { class: "muted", text: sync ? "Waiting for the execution…" : "Sending…" }));
    try {
      const path = `/actors/${enc(id)}/messages` + (sync ? "?_abaco_synchronous=true" : "");
      if (sync) {
        const r = await api("POST", path, body, { raw: true });
        const type = r.headers.get("content-type") || "";
        if (type.startsWith("application/json")) {
          const data = await r.json();
          if (!r.ok) throw new ApiError(r.status, data.message);
        }
        const blob = await r.blob();
        const text = await blob.text();
        answer.replaceChildren(el("h3", { text: "Answer" }), el("pre", { id: "sync-answer", text }));
      } else {
        const sent = await api("POST", path, body);
        const eid = field(sent, "execution_id");
        answer.replaceChildren(el("p", {}, "Accepted: execution ",
          el("a", { href: `#/actors/${enc(id)}/executions/${enc(eid)}`, id: "sent-execution", text: eid })));
      }
      notice("Message sent.", true);
    } catch (e) { answer.replaceChildren(); notice(e.message, false); }
  });
  return form;
}

async function executionsTable(id) {
  const summary = await api("GET", `/actors/${enc(id)}/executions`);
  const list = (field(summary, "executions") || []).slice(-25).reverse();
  const details = await Promise.all(list.map((x) =>
    api("GET", `/actors/${enc(id)}/executions/${enc(field(x, "id"))}`).catch(() => x)));
  const rows = details.map((x) => [
    el("a", { href: `#/actors/${enc(id)}/executions/${enc(field(x, "id"))}`, text: field(x, "id") }),
    statusSpan(field(x, "status")), field(x, "exit_code"), field(x, "runtime"), field(x, "cpu"), field(x, "io"),
    field(x, "message_received_time"), el("span", { class: "reason", text: field(x, "status_message") || "" })]);
  return el("div", {}, props([["Executions", field(summary, "total_executions")], ["Total runtime (s)", field(summary, "total_runtime")],
    ["Total cpu", field(summary, "total_cpu")], ["Total io", field(summary, "total_io")]]),
  table(["Execution", "Status", { label: "Exit code", num: true }, { label: "Runtime (s)", num: true }, { label: "CPU", num: true },
    { label: "IO", num: true }, "Received", "Reason it ended"], rows, "The 25 newest executions"));
}

async function sharingSection(id) {
  const out = el("div", {});
  const [perms, nonces, aliases] = await Promise.all([
    api("GET", `/actors/${enc(id)}/permissions`).catch((e) => ({ error: e.message })),
    api("GET", `/actors/${enc(id)}/nonces`).catch((e) => ({ error: e.message })),
    api("GET", "/actors/aliases").catch(() => []),
  ]);
  out.append(el("h3", { text: "Permissions" }));
  if (perms && perms.error) out.append(el("p", { class: "muted", text: perms.error }));
  else out.append(table(["User", "Level"], Object.entries(perms || {}).map(([u, l]) => [u, l])));
  const grant = el("form", { id: "perm-form" }, el("div", { class: "row" },
    el("div", {}, el("label", { for: "perm-user", text: "User" }), el("input", { id: "perm-user", name: "user", required: true })),
    el("div", {}, el("label", { for: "perm-level", text: "Level" }), el("select", { id: "perm-level", name: "level" },
      ["READ", "EXECUTE", "UPDATE", "NONE"].map((l) => el("option", { value: l, text: l })))),
    el("div", {}, el("button", { type: "submit", text: "Grant" }))));
  grant.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await api("POST", `/actors/${enc(id)}/permissions`, { user: grant.user.value, level: grant.level.value }); notice("Permission saved.", true); route(); }
    catch (e) { notice(e.message, false); }
  });
  out.append(grant);
  out.append(el("h3", { text: "Aliases" }));
  const mine = (Array.isArray(aliases) ? aliases : []).filter((a) => field(a, "actor_id") === id);
  out.append(table(["Alias", "Owner"], mine.map((a) => [field(a, "alias"), field(a, "owner")])));
  out.append(el("h3", { text: "Nonces" }));
  if (nonces && nonces.error) out.append(el("p", { class: "muted", text: nonces.error }));
  else out.append(table(["Nonce", "Level", { label: "Remaining uses", num: true }, "Created"],
    (nonces || []).map((n) => [field(n, "id"), field(n, "level"), field(n, "remaining_uses"), field(n, "create_time")])));
  const make = el("button", { type: "button", id: "nonce-make", text: "Make a READ nonce (10 uses)" });
  make.addEventListener("click", async () => {
    try { const n = await api("POST", `/actors/${enc(id)}/nonces`, { level: "READ", max_uses: 10 }); notice(`Nonce ${field(n, "id")} made.`, true); route(); }
    catch (e) { notice(e.message, false); }
  });
  out.append(make);
  return out;
}

async function actorView(id) {
  const a = await api("GET", `/actors/${enc(id)}`);
  const del = el("button", { type: "button", class: "danger", id: "actor-delete", text: "Delete actor" });
  del.addEventListener("click", async () => {
    if (!confirm(`Delete actor ${id}, its executions, logs and results?`)) return;
    try { await api("DELETE", `/actors/${enc(id)}`); notice(`Actor ${id} deleted.`, true); location.hash = "#/actors"; }
    catch (e) { notice(e.message, false); }
  });
  const stateless = field(a, "stateless");
  const parts = [
    props([["Status", statusSpan(field(a, "status"))], ["Reason", field(a, "status_message")], ["Image", field(a, "image")],
      ["Name", field(a, "name")], ["Owner", field(a, "owner")], ["Stateless", stateless], ["Description", field(a, "description")],
      ["Cron", field(a, "cron_on") ? `${field(a, "cron_schedule")} (next ${fmt(field(a, "cron_next_ex"))})` : "off"],
      ["Default environment", field(a, "default_environment")], ["Created", field(a, "create_time")]]),
    el("div", { class: "actions" }, el("a", { class: "button", href: "#/actors", text: "All actors" }), " ", del),
    el("h2", { text: "Send a message" }), messageForm(id),
    el("h2", { text: "Executions" }), await executionsTable(id),
  ];
  if (!stateless) {
    const st = await api("GET", `/actors/${enc(id)}/state`).catch((e) => e.message);
    parts.push(el("h2", { text: "State" }), el("pre", { class: "json", text: JSON.stringify(st, null, 2) }));
  }
  const workers = await api("GET", `/actors/${enc(id)}/workers`).catch(() => []);
  parts.push(el("h2", { text: "Workers" }), table(["Worker", "Status", "Last execution"],
    (workers || []).map((w) => [field(w, "id"), statusSpan(field(w, "status")), field(w, "last_execution_time")])));
  parts.push(el("h2", { text: "Sharing" }), await sharingSection(id));
  parts.push(el("h2", { text: "Update this actor" }), actorForm(a));
  show(`Actor ${field(a, "name") || id}`, ...parts);
}

function stopStream() {
  if (state.stream) { state.stream.abort(); state.stream = null; }
}

// Reads the server-sent events of the log stream with fetch(), so the token goes in a header.
async function followLog(id, eid, pre, marker, onEnd) {
  stopStream();
  const ctl = new AbortController();
  state.stream = ctl;
  marker.textContent = "live";
  let text = "";
  try {
    const r = await api("GET", `/actors/${enc(id)}/executions/${enc(eid)}/logs/stream`, undefined, { raw: true, signal: ctl.signal });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || r.statusText);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (!data) continue;
        const ev = JSON.parse(data);
        if (name === "log") { text += ev.text; pre.textContent = text; pre.scrollTop = pre.scrollHeight; }
        else if (name === "reset") { text = ev.text; pre.textContent = text; }
        else if (name === "status") onEnd(ev, false);
        else if (name === "end") { marker.textContent = "finished"; onEnd(ev, true); }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") { marker.textContent = "stream stopped: " + e.message; }
  } finally {
    if (state.stream === ctl) state.stream = null;
  }
}

async function executionView(id, eid) {
  const x = await api("GET", `/actors/${enc(id)}/executions/${enc(eid)}`);
  const box = el("div", { id: "exec-props" });
  const fill = (d) => box.replaceChildren(props([["Status", statusSpan(field(d, "status"))], ["Exit code", field(d, "exit_code")],
    ["Reason it ended", el("span", { class: "reason", id: "exec-reason", text: field(d, "status_message") || "" })],
    ["Runtime (s)", field(d, "runtime")], ["CPU", field(d, "cpu")], ["IO", field(d, "io")],
    ["Received", field(d, "message_received_time")], ["Started", field(d, "start_time")], ["Finished", field(d, "finish_time")],
    ["Worker", field(d, "worker_id")], ["Final state", field(d, "final_state")]]));
  fill(x);
  const pre = el("pre", { id: "log", tabindex: "0", "aria-label": "Execution log" });
  const marker = el("span", { class: "live", id: "log-marker" });
  const download = el("button", { type: "button", id: "result-download", text: "Download next result" });
  const resultNote = el("span", { class: "muted", id: "result-note" });
  download.addEventListener("click", async () => {
    try {
      const r = await api("GET", `/actors/${enc(id)}/executions/${enc(eid)}/results`, undefined, { raw: true });
      if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || r.statusText);
      const blob = await r.blob();
      if (!blob.size) { resultNote.textContent = "No result waiting (none was sent, or it was already taken)."; return; }
      const a = el("a", { href: URL.createObjectURL(blob), download: `${eid}-result.bin` });
      document.body.append(a); a.click(); a.remove();
      resultNote.textContent = `Downloaded ${blob.size} bytes.`;
    } catch (e) { notice(e.message, false); }
  });
  const quit = el("button", { type: "button", class: "danger", id: "exec-stop", text: "Stop execution" });
  quit.addEventListener("click", async () => {
    try { await api("DELETE", `/actors/${enc(id)}/executions/${enc(eid)}`); notice("Stop requested.", true); }
    catch (e) { notice(e.message, false); }
  });
  show(`Execution ${eid}`, el("p", {}, el("a", { href: `#/actors/${enc(id)}`, text: `← actor ${id}` })), box,
    el("div", { class: "actions" }, download, " ", quit, " ", resultNote),
    el("h2", {}, "Log ", marker), pre);
  followLog(id, eid, pre, marker, async (ev, ended) => {
    if (ended || ev.status) {
      try { fill(await api("GET", `/actors/${enc(id)}/executions/${enc(eid)}`)); } catch (_) { /* keep what is shown */ }
    }
  });
}

async function adminView() {
  const [users, util, workers, execs] = await Promise.all([
    api("GET", "/actors/admin/users").catch((e) => ({ error: e.message })),
    api("GET", "/actors/utilization").catch(() => ({})),
    api("GET", "/actors/admin/workers").catch(() => ({})),
    api("GET", "/actors/admin/executions").catch(() => ({})),
  ]);
  let health = null;
  try { const r = await fetch("/health"); if (r.ok) health = await r.json(); } catch (_) { health = null; }
  const addUser = el("form", { id: "user-form" }, el("div", { class: "row" },
    el("div", {}, el("label", { for: "user-name", text: "Username" }), el("input", { id: "user-name", name: "username", required: true })),
    el("div", {}, el("label", { for: "user-role", text: "Role" }), el("select", { id: "user-role", name: "role" },
      ["user", "privileged", "admin", "limited"].map((r) => el("option", { value: r, text: r })))),
    el("div", {}, el("button", { type: "submit", text: "Add user" }))), el("div", { id: "user-token", "aria-live": "polite" }));
  addUser.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const u = await api("POST", "/actors/admin/users", { username: addUser.username.value, role: addUser.role.value });
      $("user-token").replaceChildren(el("p", {}, `Token for ${field(u, "username")} (shown once): `, el("code", { class: "secret", text: field(u, "token") })));
    } catch (e) { notice(e.message, false); }
  });
  const userRows = Array.isArray(users) ? users.map((u) => {
    const name = field(u, "username");
    const reissue = el("button", { type: "button", text: "New token" });
    reissue.addEventListener("click", async () => {
      try {
        const t = await api("POST", `/actors/admin/users/${enc(name)}?tenant=${enc(field(u, "tenant") || "")}`);
        $("user-token").replaceChildren(el("p", {}, `New token for ${name} (shown once): `, el("code", { class: "secret", text: field(t, "token") })));
      } catch (e) { notice(e.message, false); }
    });
    return [name, field(u, "tenant"), fmt(field(u, "roles")), field(u, "create_time"), reissue];
  }) : [];
  const summary = field(workers, "summary") || {};
  const exsum = field(execs, "summary") || {};
  show("Instance",
    el("h2", { text: "Health" }), health ? el("pre", { class: "json", id: "health", text: JSON.stringify(health, null, 2) })
      : el("p", { class: "muted", text: "GET /health did not answer on this server." }),
    el("h2", { text: "Utilization" }), props(Object.entries(util || {})),
    el("h2", { text: "Workers" }), props(Object.entries(summary)),
    el("h2", { text: "Executions" }), props(Object.entries(exsum)),
    el("h2", { text: "Users and tokens" }),
    users && users.error ? el("p", { class: "muted", text: users.error }) : table(["User", "Tenant", "Roles", "Created", ""], userRows),
    addUser,
    el("p", {}, "Monitoring: ", el("a", { href: "/metrics", text: "/metrics" }), " (Prometheus text). API: ",
      el("a", { href: "/docs", text: "/docs" }), ", ", el("a", { href: "/openapi.json", text: "/openapi.json" }), "."));
}

// -- routing ------------------------------------------------------------------------------------------------
async function route() {
  stopStream();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "admin") await adminView();
    else if (parts[0] === "actors" && parts[1] && parts[2] === "executions" && parts[3]) await executionView(parts[1], parts[3]);
    else if (parts[0] === "actors" && parts[1]) await actorView(parts[1]);
    else await actorsView();
    $("main").focus();
  } catch (e) {
    if (e.status === 401 || (e.status === 400 && /JWT|token/i.test(e.message))) { signOut(); notice(e.message, false); return; }
    show("Something went wrong", el("p", { class: "reason", text: e.message }), el("a", { href: "#/actors", text: "Back to the actors" }));
  }
}

function render() {
  const signedIn = !!state.token;
  $("signin").hidden = signedIn;
  $("view").hidden = !signedIn;
  $("nav").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("nav-admin").hidden = !state.admin;
  $("who").textContent = signedIn ? (state.admin ? "signed in (admin)" : "signed in") : "";
  if (signedIn) route();
  else $("token").focus();
}

function setLarge(on) {
  document.documentElement.classList.toggle("large", on);
  $("large").setAttribute("aria-pressed", String(on));
  localStorage.setItem("lightabaco.large", on ? "1" : "");
}

document.addEventListener("DOMContentLoaded", async () => {
  setLarge(localStorage.getItem("lightabaco.large") === "1");
  $("large").addEventListener("click", () => setLarge(!document.documentElement.classList.contains("large")));
  $("signout").addEventListener("click", signOut);
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await signIn($("token").value.trim()); $("token").value = ""; render(); }
    catch (e) { state.token = ""; notice("Sign-in failed: " + e.message, false); }
  });
  window.addEventListener("hashchange", () => { if (state.token) route(); });
  if (state.token) {
    try { await signIn(state.token); } catch (_) { state.token = ""; sessionStorage.removeItem(KEY); }
  }
  render();
});
