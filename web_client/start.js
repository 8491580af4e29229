// Start page: a coordinator writes the request (the checklist follows as they type, from the
// server's own rules), sends it, and creates a join link per person.
import { api, describe } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { $, el } from "./lib/dom.js";
import { joinLink } from "./lib/joinlink.js";
import { CLOCK, LesionEditor, capital, findingControls, options, readFinding } from "./lib/lexicon.js";
import { PHANTOM_DEVICE } from "./lib/phantom.js";

const CHECK_DELAY_MS = 300;
// Nothing of the page runs before its link is accepted (lib/gate.js).
health(); // the server's state, whatever the link
const { token } = await admit("start", { keep: ["status"] });
const form = $("request");
let consultationId = null;
let lesions = null; // the structured first read of a breast request (lib/lexicon.js)

async function health() {
  try {
    const h = await (await fetch("/healthz")).json();
    $("status").textContent = `Server ${h.status}, version ${h.version}, records in ${h.store}.`;
  } catch {
    $("status").textContent = "The server cannot be reached.";
  }
}

function text(name) {
  const value = form.elements[name]?.value.trim();
  return value ? value : undefined;
}

function number(name) {
  const value = form.elements[name]?.value;
  return value === "" || value === undefined ? undefined : Number(value);
}

function prune(object) {
  const kept = Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
  return Object.keys(kept).length ? kept : undefined;
}

// The request body, with only what was filled in.
export function body() {
  const modes = [...form.querySelectorAll('input[name="imaging_modes"]:checked')].map((i) => i.value);
  const anatomy = (text("anatomy") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const comparison = ($("comparison").value || "").split("\n").map((s) => s.trim()).filter(Boolean);
  return prune({
    clinical_question: text("clinical_question"),
    urgency: text("urgency"),
    application: text("application"),
    patient_ref: text("patient_ref"),
    exam_objective: text("exam_objective"),
    first_read: text("first_read"),
    device: prune({
      manufacturer: text("device.manufacturer"),
      model: text("device.model"),
      burned_in_text: $("device_clean").checked ? false : undefined,
    }),
    transducer: prune({
      model: text("transducer.model"),
      type: text("transducer.type"),
      frequency_mhz: number("transducer.frequency_mhz"),
    }),
    imaging_modes: modes.length ? modes : undefined,
    doppler: prune({
      prf_hz: number("doppler.prf_hz"),
      wall_filter_hz: number("doppler.wall_filter_hz"),
      angle_correction_deg: number("doppler.angle_correction_deg"),
    }),
    anatomy: anatomy.length ? anatomy : undefined,
    laterality: text("laterality"),
    patient_position: text("patient_position"),
    transducer_orientation: text("transducer_orientation"),
    comparison_studies: $("no_comparison").checked ? [] : comparison.length ? comparison : undefined,
    about_change: text("about_change") === undefined ? undefined : text("about_change") === "true",
    breast: text("application") === "breast" ? prune({
      lesion_clock: text("breast.lesion_clock"),
      distance_from_nipple_cm: number("breast.distance_from_nipple_cm"),
      first_read_birads: text("breast.first_read_birads"),
      additional_imaging: text("breast.additional_imaging"),
      first_read_lesions: lesions?.value(),
    }) : undefined,
    dvt: text("application") === "dvt" ? dvtBody() : undefined,
    incomplete_reason: $("incomplete").classList.contains("hidden") ? undefined : text("incomplete_reason"),
  }) || {};
}

function dvtBody() {
  const examined = [...form.querySelectorAll('input[name="dvt.segment"]:checked')].map((i) => i.value);
  const graded = Object.fromEntries(examined
    .map((s) => [s, form.elements[`dvt.compressibility.${s}`].value])
    .filter(([, v]) => v));
  const persist = text("dvt.symptoms_persist_after_negative");
  // The first read per examined segment, in the lexicon: what it found beyond the segment.
  const found = examined
    .map((s) => ({ compressibility: graded[s], ...readFinding(form.querySelector(`tr[data-segment="${s}"]`), s) }))
    .filter((f) => Object.values(f).filter(Boolean).length > 1);
  return prune({
    segments_examined: examined.length ? examined : undefined,
    compressibility: Object.keys(graded).length ? graded : undefined,
    first_read_segments: found.length ? found.map((f) => prune(f)) : undefined,
    symptoms_persist_after_negative: persist === undefined ? undefined : persist === "true",
    prior_scan: text("dvt.prior_scan"),
  });
}

function templateFields() {
  $("breast-fields").classList.toggle("hidden", $("application").value !== "breast");
  $("dvt-fields").classList.toggle("hidden", $("application").value !== "dvt");
}

// The DVT segments and grades come from the server (GET /api/vocabulary), as it checks them.
function buildTemplateInputs({ dvt, breast }) {
  $("lesion_clock").append(...CLOCK.map((c) => el("option", { value: c.value, text: c.label })));
  $("dvt-segments").replaceChildren(...dvt.segments.map(({ value, label }) => el("tr", { "data-segment": value },
    el("td", {}, el("label", { class: "inline" },
      el("input", { type: "checkbox", name: "dvt.segment", value }), capital(label))),
    el("td", {}, options(dvt.compressibility.map((c) => ({ value: c.value, label: capital(c.label) })),
      { name: `dvt.compressibility.${value}`, "aria-label": `Compressibility of the ${label}` })),
    ...(dvt.findings ? findingControls(dvt, value, label).map((control) => el("td", {}, control)) : []),
  )));
  // A first-read lesion starts where the request says the lesion is, with its category.
  const defaults = () => prune({
    side: ["left", "right"].includes(text("laterality")) ? text("laterality") : undefined,
    clock: text("breast.lesion_clock"),
    distance_from_nipple_cm: number("breast.distance_from_nipple_cm"),
    category: text("breast.first_read_birads"),
  }) || {};
  if (breast) lesions = new LesionEditor($("first-read-lesions"), breast, { defaults });
  $("first-read-lesions-field").classList.toggle("hidden", !breast);
}

function renderChecklist(check) {
  $("flags").replaceChildren(...(check.flags || []).map((f) =>
    el("li", { class: "error", "data-flag": f.code, text: `⚑ ${f.message}` })));
  // Sending incomplete needs a reason: ask for it only while something optional is missing.
  $("incomplete").classList.toggle("hidden", !check.missing.length);
  const items = [...check.required_missing, ...check.missing];
  $("checklist").replaceChildren(
    ...items.map((m) =>
      el("li", { "data-field": m.field },
        el("strong", { text: m.label }),
        check.required_missing.includes(m) ? el("span", { class: "error", text: " (required)" }) : null,
        el("span", { class: "why", text: m.why }),
      ),
    ),
  );
  $("checklist-summary").textContent = check.complete
    ? "Complete: the expert has everything the checklist asks for."
    : `${items.length} item${items.length === 1 ? "" : "s"} missing. A request can be sent without the optional ones.`;
}

// Errors stay until the user acts: a refused send's or invite's error stays until the next
// send or invite (the checklist's refresh as a field is left must not wipe it); the checklist's
// own error is cleared by its next good answer.
let errorFrom = null;
function showError(error, from) {
  $("form-error").textContent = describe(error);
  errorFrom = from;
}
function clearError(from) {
  if (from !== "checklist" || errorFrom === "checklist") {
    $("form-error").textContent = "";
    errorFrom = null;
  }
}

let timer = null;
let asked = 0;
function checkSoon() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    const mine = ++asked;
    try {
      const check = await api(token, "/api/consultations/checklist", { method: "POST", json: body() });
      if (mine !== asked) return;
      clearError("checklist");
      renderChecklist(check);
    } catch (error) {
      if (mine === asked && errorFrom !== "send") showError(error, "checklist");
    }
  }, CHECK_DELAY_MS);
}

async function submit(event) {
  event.preventDefault();
  clearError("send");
  try {
    const record = await api(token, "/api/consultations", { method: "POST", json: body() });
    consultationId = record.id;
    for (const fieldset of form.querySelectorAll("fieldset")) fieldset.disabled = true;
    $("submit").disabled = true;
    $("submit").textContent = "Request sent";
    $("invites").classList.remove("hidden");
    $("status").textContent = `Consultation ${record.id.slice(0, 8)} requested, due ${new Date(record.due_at).toLocaleString()}.`;
    renderChecklist({ ...record.checklist, required_missing: [], flags: record.flags });
    $("invite-name").focus();
  } catch (error) {
    showError(error, "send");
  }
}

async function invite() {
  const role = $("invite-role").value;
  const name = $("invite-name").value.trim() || role;
  try {
    const made = await api(token, `/api/consultations/${consultationId}/invites`, {
      method: "POST",
      json: { role, name },
    });
    $("links").append(el("li", {}, joinLink(made, { label: `${name} (${role})`, role })));
    $("invite-role").value = role === "operator" ? "expert" : role;
    $("invite-name").value = role === "operator" ? "Expert" : "";
    clearError("invite");
  } catch (error) {
    showError(error, "invite");
  }
}

// The devices with a de-identification profile: a request naming another one is warned at once
// (its captures would be refused until it has one).
let profiled = null;
const normal = (text) => text.trim().replace(/\s+/g, " ").toLowerCase();

async function loadProfiles() {
  try {
    profiled = (await api(token, "/api/device-profiles")).profiles;
  } catch {
    profiled = null; // no warning rather than a wrong one
  }
}

function warnDevice() {
  const manufacturer = $("device_manufacturer").value, model = $("device_model").value;
  const known = !profiled || !manufacturer.trim() || !model.trim() || $("device_clean").checked
    || profiled.some((p) => normal(p.manufacturer) === normal(manufacturer) && normal(p.model) === normal(model));
  $("device-warning").classList.toggle("hidden", known);
  const setup = `/setup#${new URLSearchParams({ token, manufacturer, model })}`;
  $("device-warning").replaceChildren(...(known ? [] : [
    "This device has no de-identification profile yet: its captures will be refused until one is saved for it, or the video is declared free of burned-in text. ",
    el("a", { href: setup, target: "_blank", rel: "noopener", text: "Set this scanner up" }),
  ]));
}

$("queue-link").href = `/queue#token=${encodeURIComponent(token)}`;
form.classList.remove("hidden");
let vocabulary = { dvt: { segments: [], compressibility: [] } };
try {
  vocabulary = await api(token, "/api/vocabulary");
} catch (error) {
  $("form-error").textContent = describe(error);
}
buildTemplateInputs(vocabulary);
$("application").addEventListener("change", templateFields);
form.addEventListener("input", checkSoon);
await loadProfiles();
for (const id of ["device_manufacturer", "device_model", "device_clean"]) {
  $(id).addEventListener("input", warnDevice);
  $(id).addEventListener("change", warnDevice);
}
form.addEventListener("change", checkSoon);
form.addEventListener("submit", submit);
$("invite").addEventListener("click", invite);
$("use-phantom").addEventListener("click", () => {
  $("device_manufacturer").value = PHANTOM_DEVICE.manufacturer;
  $("device_model").value = PHANTOM_DEVICE.model;
  warnDevice();
  checkSoon();
});
checkSoon();
