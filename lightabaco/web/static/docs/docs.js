// The API page: lists the operations of /openapi.json and lets you send each one with your token.
// Plain JavaScript, nothing fetched from elsewhere; responses are shown as text, never as markup.
"use strict";

const KEY = "lightabaco.token";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

let counter = 0;

function operationBox(method, path, op) {
  const n = ++counter;
  const inputs = [];
  const form = el("form", {});
  for (const p of op.parameters || []) {
    const id = `p${n}-${p.name}`;
    const input = el("input", { id, name: p.name, required: p.in === "path" });
    inputs.push([p, input]);
    form.append(el("label", { for: id, text: `${p.name} (${p.in}${p.required ? ", required" : ""})` }), input);
    if (p.description) form.append(el("div", { class: "muted", text: p.description }));
  }
  let body = null;
  if (op.requestBody) {
    body = el("textarea", { id: `b${n}`, rows: 4 });
    form.append(el("label", { for: `b${n}`, text: "Body (JSON)" }), body);
  }
  const out = el("pre", { class: "json", "aria-live": "polite" });
  form.append(el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", text: "Send" })), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const [p, input] of inputs) {
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(input.value));
      else if (input.value) query.set(p.name, input.value);
    }
    if ([...query].length) url += "?" + query;
    const headers = {};
    const token = $("token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method: method.toUpperCase(), headers };
    if (body && body.value.trim()) { headers["Content-Type"] = "application/json"; init.body = body.value; }
    out.textContent = "…";
    try {
      const r = await fetch(url, init);
      const text = await r.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
      out.textContent = `${r.status} ${r.statusText}\n${shown}`;
    } catch (e) { out.textContent = String(e); }
  });
  return el("details", { class: "op" },
    el("summary", {}, el("span", { class: `method m-${method}`, text: method.toUpperCase() }), " ",
      el("span", { class: "path", text: path }), " — ", op.summary || ""),
    form);
}

document.addEventListener("DOMContentLoaded", async () => {
  const token = $("token");
  token.value = sessionStorage.getItem(KEY) || "";
  token.addEventListener("change", () => sessionStorage.setItem(KEY, token.value.trim()));
  $("auth").addEventListener("submit", (ev) => ev.preventDefault());
  const doc = await (await fetch("/openapi.json")).json();
  const groups = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) (groups[(op.tags || ["other"])[0]] ||= []).push([method, path, op]);
  }
  const ops = $("ops");
  ops.replaceChildren(el("p", { class: "muted", text: `${doc.info.title} ${doc.info.version}: ${Object.values(groups).flat().length} operations.` }));
  for (const [tag, list] of Object.entries(groups)) {
    ops.append(el("h2", { text: tag }), ...list.map(([m, p, op]) => operationBox(m, p, op)));
  }
});
