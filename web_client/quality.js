// The second-opinion ledger (coordinator): over a chosen period, per application and per reader
// (pseudonyms, as in the SR), how second opinions compare with first reads and with what happened
// next (GET /api/quality), every figure with the counts behind it and its 95% interval; and the
// outcomes of signed second opinions, recorded here (POST /api/consultations/{id}/outcome).
// The rules behind each figure: README, "The second-opinion ledger".
import { api, describe } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { $, el } from "./lib/dom.js";

const DAY_MS = 86400000;
const DEFAULT_DAYS = 365;
const NAMES = { breast: "Breast", dvt: "DVT" };
// Nothing of the page runs before its link is accepted (lib/gate.js).
const { token } = await admit("quality");

const day = (date) => date.toISOString().slice(0, 10);
const percent = (value) => (value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`);

// "0.30 (95% CI 0.11–0.60), 3 of 10"
function proportionText(p) {
  if (!p || p.value === null) return `— (no cases, n = ${p ? p.n : 0})`;
  const [low, high] = p.ci95;
  return `${percent(p.value)} (95% CI ${percent(low)}–${percent(high)}), ${p.positives} of ${p.n}`;
}

function rateText(r) {
  return r.rate === null ? `— (n = ${r.n})` : `${percent(r.rate)}, ${r.count} of ${r.n}`;
}

function agreementText(a) {
  if (a.percent === null) return `— (no pairs)`;
  const kappa = a.kappa === null ? "κ undefined" : `κ ${a.kappa.toFixed(2)}`;
  return `${a.percent.toFixed(1)} %, ${kappa}, ${a.agreed} of ${a.n}`;
}

// The figure rows of one application's table: [label, text].
function figures(application, f) {
  const rows = [
    ["Second opinions (signed, with a first read)", String(f.second_opinions)],
    ["Category agreement with the first read", agreementText(f.category_agreement)],
    ["Major discordance", rateText(f.discordance.major)],
    ["Minor discordance", rateText(f.discordance.minor)],
    ["Outcomes known", String(f.outcomes_known)],
  ];
  if (application === "breast") {
    const d = f.downgraded;
    rows.push(["First-read BI-RADS 4–5 downgraded to 2–3",
      `${rateText(d)}; biopsied anyway ${d.biopsied}, malignant ${d.malignant}`]);
    rows.push(["PPV of a biopsy recommendation: first read", proportionText(f.ppv_biopsy.first_read)]);
    rows.push(["PPV of a biopsy recommendation: second opinion", proportionText(f.ppv_biopsy.second_opinion)]);
  } else if (application === "dvt") {
    const r = f.repeat_scan_confirmed;
    rows.push(["Repeat scan agreed: first read", proportionText(r.first_read)]);
    rows.push(["Repeat scan agreed: second opinion", proportionText(r.second_opinion)]);
    const a = f.anticoagulation;
    rows.push(["Anticoagulation started after a DVT / no-DVT opinion",
      `${a.after_dvt.started} of ${a.after_dvt.n} / ${a.after_no_dvt.started} of ${a.after_no_dvt.n}`]);
  }
  return rows;
}

function applicationTable(application, f) {
  return el("table", { id: `ledger-${application}`, class: "ledger" },
    el("caption", { text: NAMES[application] || application }),
    el("tbody", {}, ...figures(application, f).map(([label, text]) =>
      el("tr", {}, el("th", { scope: "row", text: label }), el("td", { text })))));
}

function outcomeFigure(application, f) {
  if (application === "breast") return `PPV ${proportionText(f.ppv_biopsy.second_opinion)}`;
  return `repeat scan agreed ${proportionText(f.repeat_scan_confirmed.second_opinion)}`;
}

function query() {
  const params = new URLSearchParams({ from: $("from").value, to: $("to").value, basis: $("basis").value });
  if ($("application").value) params.set("application", $("application").value);
  if ($("reader").value.trim()) params.set("reader", $("reader").value.trim());
  return params;
}

async function showLedger() {
  $("error").textContent = "";
  $("status").textContent = "Loading…";
  try {
    const ledger = await api(token, `/api/quality?${query()}`);
    const { from, to, basis } = ledger.period;
    $("status").textContent = `${from} to ${to} (not included), by ${basis === "signed_at" ? "signing" : "request"} date`;
    $("ledger").replaceChildren(...Object.entries(ledger.applications).map(([a, f]) => applicationTable(a, f)));
    const rows = [];
    for (const [reader, apps] of Object.entries(ledger.readers)) {
      for (const [a, f] of Object.entries(apps)) {
        rows.push(el("tr", {},
          el("td", { class: "reader", text: reader }),
          el("td", { text: NAMES[a] || a }),
          el("td", { text: String(f.second_opinions) }),
          el("td", { text: agreementText(f.category_agreement) }),
          el("td", { text: rateText(f.discordance.major) }),
          el("td", { text: rateText(f.discordance.minor) }),
          el("td", { text: outcomeFigure(a, f) })));
      }
    }
    $("readers").tBodies[0].replaceChildren(...rows);
  } catch (error) {
    $("status").textContent = "Not shown";
    $("error").textContent = describe(error);
  }
}

// The outcome form, for one signed consultation at a time.
let chosen = null;

function showBreastFields() {
  const result = $("breast-result").value;
  for (const label of $("breast-fields").querySelectorAll("label[data-for]")) {
    label.classList.toggle("hidden", !label.dataset.for.split(" ").includes(result));
  }
}

function openOutcome(c) {
  chosen = c;
  $("outcome-error").textContent = "";
  $("outcome-title").textContent = `Outcome: accession ${c.accession_number || c.id.slice(0, 8)} (${NAMES[c.application]})`;
  $("breast-fields").classList.toggle("hidden", c.application !== "breast");
  $("dvt-fields").classList.toggle("hidden", c.application !== "dvt");
  showBreastFields();
  $("outcome-form").classList.remove("hidden");
  $("outcome-form").querySelector("select, input").focus();
}

function outcomeBody(application) {
  if (application === "breast") {
    const result = $("breast-result").value;
    const breast = { result };
    if (result === "biopsy") breast.pathology = $("breast-pathology").value;
    if (result === "follow_up_imaging") breast.imaging = $("breast-imaging").value;
    if (["biopsy", "follow_up_imaging"].includes(result) && $("breast-date").value) breast.date = $("breast-date").value;
    if (result === "clinical_follow_up" && $("breast-note").value.trim()) breast.note = $("breast-note").value.trim();
    return { breast };
  }
  const started = $("dvt-started").checked;
  const dvt = { anticoagulation: { started }, repeat_scan: $("dvt-repeat").value };
  if (started && $("dvt-started-date").value) dvt.anticoagulation.date = $("dvt-started-date").value;
  if (dvt.repeat_scan !== "not_done" && $("dvt-repeat-date").value) dvt.repeat_scan_date = $("dvt-repeat-date").value;
  return { dvt };
}

async function saveOutcome(event) {
  event.preventDefault();
  $("outcome-error").textContent = "";
  try {
    const saved = await api(token, `/api/consultations/${chosen.id}/outcome`, {
      method: "POST",
      json: outcomeBody(chosen.application),
    });
    const cell = document.querySelector(`#signed tr[data-id="${chosen.id}"] .recorded`);
    if (cell) cell.textContent = `recorded (version ${saved.current.version})`;
    $("outcome-form").classList.add("hidden");
    showLedger();
  } catch (error) {
    $("outcome-error").textContent = describe(error);
  }
}

async function showSigned() {
  try {
    const { consultations } = await api(token, "/api/consultations?state=signed");
    const followed = consultations.filter((c) => c.kind === "consultation" && NAMES[c.application]);
    $("signed").tBodies[0].replaceChildren(...followed.map((c) => el("tr", { "data-id": c.id },
      el("td", { text: c.accession_number || "—" }),
      el("td", { text: c.patient_ref || "no patient reference" }),
      el("td", { text: NAMES[c.application] }),
      el("td", { text: new Date(c.requested_at).toLocaleDateString() }),
      el("td", {}, el("button", { type: "button", text: "Record outcome", onclick: () => openOutcome(c) }),
        " ", el("span", { class: "recorded muted" })))));
  } catch (error) {
    $("error").textContent = describe(error);
  }
}

const today = new Date();
$("to").value = day(new Date(today.getTime() + DAY_MS));
$("from").value = day(new Date(today.getTime() + DAY_MS - DEFAULT_DAYS * DAY_MS));
$("queue-link").href = `/queue#token=${encodeURIComponent(token)}`;
$("period").addEventListener("submit", (event) => { event.preventDefault(); showLedger(); });
$("breast-result").addEventListener("change", showBreastFields);
$("outcome-form").addEventListener("submit", saveOutcome);
$("outcome-cancel").addEventListener("click", () => $("outcome-form").classList.add("hidden"));
showLedger();
showSigned();
