// The queue: open consultations, most urgent first, then by due time (the server's order),
// with the time left, counted down by the page. Live: the server says `queue_changed` on
// Socket.IO /queue when a request is sent, accepted, assigned, reported, signed or cancelled,
// and the page reads the list again (also on every (re)connection); no polling. A credentialed
// expert (their own reading-room link) sees what they are credentialed for and accepts it; a
// coordinator sees everything, gives experts a join link and reassigns.
import { io } from "/static/vendor/socket.io.esm.min.js";
import { api, claims, describe, timeLeft } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { $, el } from "./lib/dom.js";
import { joinLink } from "./lib/joinlink.js";

// The page's own countdown of the time left: no request to the server.
const COUNTDOWN_MS = 15000;
// Nothing of the page runs before its link is accepted (lib/gate.js).
const { token } = await admit("queue");
const isExpert = claims(token)?.role === "expert";
let experts = [];
let listFailed = false; // the error shown is the list's own: the next good refresh clears it

function fail(error) {
  $("error").textContent = describe(error);
}

async function accept(row) {
  $("error").textContent = "";
  try {
    const made = await api(token, `/api/consultations/${row.id}/accept`, { method: "POST" });
    location.assign(made.url);
  } catch (error) {
    fail(error);
  }
}

async function invite(row) {
  $("error").textContent = "";
  try {
    const made = await api(token, `/api/consultations/${row.id}/invites`, {
      method: "POST",
      json: { role: "expert", name: "Expert" },
    });
    const whose = [row.patient_ref, row.accession_number && `accession ${row.accession_number}`].filter(Boolean).join(", ");
    $("links").prepend(el("li", {}, joinLink(made, { label: `Expert link for ${whose || row.id.slice(0, 8)}`, role: "expert" })));
  } catch (error) {
    fail(error);
  }
}

async function assign(row, sub) {
  $("error").textContent = "";
  try {
    await api(token, `/api/consultations/${row.id}/assign`, { method: "POST", json: { expert: sub || null } });
    refresh(true);
  } catch (error) {
    fail(error);
    refresh(true); // the list shows who is really assigned, not the refused choice
  }
}

function actions(c) {
  if (isExpert) {
    return el("td", {}, el("button", { type: "button", class: "primary", text: "Accept and join", onclick: () => accept(c) }));
  }
  // Whom it may be assigned to: the server says (its credentialing rule), the list names them.
  const credentialed = experts.filter((x) => c.credentialed_experts?.includes(x.sub));
  const select = el("select", { "aria-label": "Assigned expert", onchange: (e) => assign(c, e.target.value) },
    el("option", { value: "", text: "unassigned" }),
    ...credentialed.map((x) => el("option", { value: x.sub, text: x.name, selected: x.sub === c.assigned_expert })));
  return el("td", {}, select, " ", el("button", { type: "button", text: "Join link", onclick: () => invite(c) }));
}

// What a request holds for review: "2 stills, 1 clip, 3 scanner images".
function attachedText(attached = {}) {
  const parts = [["stills", "still"], ["clips", "clip"], ["scanner_images", "scanner image"], ["priors", "prior"]]
    .filter(([key]) => attached[key])
    .map(([key, noun]) => `${attached[key]} ${noun}${attached[key] === 1 ? "" : "s"}`);
  return parts.join(", ") || "nothing yet";
}

// Rows by consultation id: a refresh rebuilds only the rows whose content changed (the time left
// is updated in place), so the keyboard focus stays where it was and an expert list being chosen
// from does not close under the pointer.
const rows = new Map(); // id -> {key, node, time}

function rowOf(c) {
  // The experts offered in the row's list, by name: a credential or name change rebuilds it.
  const offered = experts.filter((x) => c.credentialed_experts?.includes(x.sub)).map((x) => [x.sub, x.name]);
  const key = JSON.stringify([c.urgency, c.application, c.clinical_question, c.flags, c.incomplete_reason,
    c.state, c.checklist, c.assigned_expert, offered, c.attached, c.accession_number, c.patient_ref, c.device]);
  let row = rows.get(c.id);
  if (row?.key !== key) {
    const time = el("td");
    const node = el("tr", { "data-id": c.id },
      el("td", {}, el("span", { class: `pill ${c.urgency}`, text: c.urgency })),
      time,
      el("td", {}, el("div", { class: "patient-ref", text: c.patient_ref || "no patient reference" }),
        el("div", { class: "muted", text: `Accession ${c.accession_number || "—"}` })),
      el("td", { text: deviceText(c.device) }),
      el("td", { text: c.application || "—" }),
      el("td", {}, c.clinical_question,
        ...(c.flags || []).map((f) => el("div", { class: "error", text: `⚑ ${f.message}` })),
        c.incomplete_reason ? el("div", { class: "muted", text: `Sent incomplete: ${c.incomplete_reason}` }) : null),
      el("td", { text: attachedText(c.attached) }),
      el("td", { text: c.state }),
      el("td", { text: c.checklist.complete ? "complete" : `${c.checklist.missing_count} missing` }),
      actions(c),
    );
    row = { key, node, time };
    rows.set(c.id, row);
  }
  // The due time on this page's clock: the server's time left from now (no clock skew).
  row.deadline = performance.now() + c.time_left_seconds * 1000;
  row.time.title = new Date(c.due_at).toLocaleString();
  showTimeLeft(row);
  return row.node;
}

function showTimeLeft(row) {
  const seconds = Math.round((row.deadline - performance.now()) / 1000);
  row.time.className = seconds < 0 ? "error" : "";
  row.time.textContent = timeLeft(seconds);
}

function countDown() {
  for (const row of rows.values()) showTimeLeft(row);
}

// "Acme U1" from the request's device, or a dash.
function deviceText(device) {
  return [device?.manufacturer, device?.model].filter(Boolean).join(" ") || "—";
}

// Put `nodes` in `parent` in this order, moving only what is out of place.
function reconcile(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

function focusedControl() {
  const active = document.activeElement;
  const row = active?.closest?.("#queue tr[data-id]");
  return row ? { id: row.dataset.id, tag: active.tagName.toLowerCase(), node: active } : null;
}

// One read of the list at a time: a change announced during a read is read again after it.
let reading = null, again = null;
async function refresh(force = false) {
  if (reading) {
    again = { force: force || again?.force };
    return reading;
  }
  reading = read(force);
  try {
    await reading;
  } finally {
    reading = null;
  }
  if (again) {
    const { force: forced } = again;
    again = null;
    await refresh(forced);
  }
}

async function read(force) {
  const focus = focusedControl();
  if (focus?.tag === "select" && !force) {
    // An expert list is open under the pointer: read once it is chosen or left.
    focus.node.addEventListener("blur", () => refresh(), { once: true });
    return;
  }
  try {
    const answer = await api(token, "/api/consultations");
    if (!isExpert) experts = (await api(token, "/api/experts")).experts || [];
    else $("who").textContent = `${answer.expert.name}: ${answer.expert.subspecialties.join(", ")}`;
    const { consultations } = answer;
    const open = new Set(consultations.map((c) => c.id));
    for (const id of rows.keys()) if (!open.has(id)) rows.delete(id);
    reconcile($("queue"), consultations.map(rowOf));
    if (focus && document.activeElement === document.body) $("queue").querySelector(`tr[data-id="${focus.id}"] ${focus.tag}`)?.focus();
    const overdue = consultations.filter((c) => c.overdue).length;
    $("status").textContent = `${consultations.length} open, ${overdue} overdue · updated ${new Date().toLocaleTimeString()}`;
    // Not a refused accept or assignment: that message stays until the next action.
    if (listFailed) $("error").textContent = "";
    listFailed = false;
  } catch (error) {
    fail(error);
    listFailed = true;
  }
}

$("new-link").href = `/#token=${encodeURIComponent(token)}`;
$("new-link").classList.toggle("hidden", isExpert);
$("quality-link").href = `/quality#token=${encodeURIComponent(token)}`;
$("quality-link").classList.toggle("hidden", isExpert);
$("action-title").textContent = isExpert ? "Take it" : "Expert";
const feed = io("/queue", { auth: { token }, transports: ["websocket"], reconnectionDelay: 500, reconnectionDelayMax: 4000 });
feed.on("connect", () => refresh(true));
feed.on("queue_changed", () => refresh());
feed.on("disconnect", () => { $("status").textContent = "Reconnecting… (the list may be out of date)"; });
// Refused by the server (the link expired or the credentials ended while the page was open):
// Socket.IO stops retrying; say why rather than show a list that no longer updates.
feed.on("connect_error", (error) => {
  if (feed.active) return;
  $("status").textContent = "Not updating";
  $("error").textContent = `Live updates refused: ${error.data?.message || error.message}. Open the queue again with a new link.`;
});
setInterval(countDown, COUNTDOWN_MS);
