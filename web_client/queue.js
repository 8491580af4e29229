// The queue: open consultations, most urgent first, then by due time (the server's order),
// with the time left; refreshed every few seconds. A coordinator page for now: experts get a
// join link from here (credentialed expert accounts come with the second-opinion workflow).
import { api, describe, el, pageToken, timeLeft } from "./lib/api.js";

const REFRESH_MS = 10000;
const $ = (id) => document.getElementById(id);
const token = pageToken();

async function join(row) {
  try {
    const made = await api(token, `/api/consultations/${row.id}/invites`, {
      method: "POST",
      json: { role: "expert", name: "Expert" },
    });
    $("links").prepend(el("li", {}, `Expert link for ${row.id.slice(0, 8)}: `,
      el("a", { href: made.url, target: "_blank", rel: "noopener", text: made.url })));
  } catch (error) {
    $("error").textContent = describe(error);
  }
}

async function refresh() {
  try {
    const { consultations } = await api(token, "/api/consultations");
    $("queue").replaceChildren(...consultations.map((c) => el("tr", { "data-id": c.id },
      el("td", {}, el("span", { class: `pill ${c.urgency}`, text: c.urgency })),
      el("td", { class: c.overdue ? "error" : "", text: timeLeft(c.time_left_seconds),
        title: new Date(c.due_at).toLocaleString() }),
      el("td", { text: c.application || "—" }),
      el("td", { text: c.clinical_question }),
      el("td", { text: c.state }),
      el("td", { text: c.checklist.complete ? "complete" : `${c.checklist.missing_count} missing` }),
      el("td", {}, el("button", { type: "button", text: "Expert link", onclick: () => join(c) })),
    )));
    const overdue = consultations.filter((c) => c.overdue).length;
    $("status").textContent = `${consultations.length} open, ${overdue} overdue · ${new Date().toLocaleTimeString()}`;
    $("error").textContent = "";
  } catch (error) {
    $("error").textContent = describe(error);
  }
}

$("new-link").href = `/#token=${encodeURIComponent(token || "")}`;
if (!token) $("error").textContent = "This page needs the coordinator link.";
else {
  refresh();
  setInterval(refresh, REFRESH_MS);
}
