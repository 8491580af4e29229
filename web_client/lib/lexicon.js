// The shared reporting lexicon on the pages, in the words the server checks (GET /api/vocabulary):
// the breast lesion editor that both the request form (the first read) and the expert's report
// use, what each examined venous segment shows, and how a lesion or a segment is said in a line.
import { api } from "./api.js";
import { el } from "./dom.js";

const SIZES = 3; // up to three diameters, mm
const SIZE_MM_MAX = 300;
const NIPPLE_CM_MAX = 30;
// The clock-face positions, on the hour and the half hour ({value, label}).
export const CLOCK = Array.from({ length: 12 }, (_, i) => [`${i + 1}`, `${i + 1}:30`]).flat()
  .map((value) => ({ value, label: `${value.includes(":") ? value : `${value}:00`} o'clock` }));

let asked = null;
// The vocabulary, asked once per page (a failed answer is asked again next time).
export function vocabulary(token) {
  asked ??= api(token, "/api/vocabulary").catch((error) => {
    asked = null;
    throw error;
  });
  return asked;
}

export const capital = (text) => (text ? text[0].toUpperCase() + text.slice(1) : text);

// A select offering `choices` ([{value, label}]) after "—" (not said), or after what it is for.
export function options(choices, attributes = {}, unset = "—") {
  return el("select", attributes, el("option", { value: "", text: unset }),
    ...choices.map((c) => el("option", { value: c.value, text: c.label })));
}

// A value the select lacks (an older report's, a key image no longer cited) is kept, not lost.
function choose(select, value, label = value) {
  if (value && ![...select.options].some((o) => o.value === value)) {
    select.append(el("option", { value, text: label }));
  }
  select.value = value ?? "";
}

// The label of `value` among `choices` ([{value, label}]), or the value in words.
const labelOf = (choices, value) => choices?.find((c) => c.value === value)?.label ?? String(value).replaceAll("_", " ");

const picked = (root, selector) => [...root.querySelectorAll(selector)].filter((i) => i.checked).map((i) => i.value);
const prune = (object) => Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== ""));

// Checkboxes for a list field ("flow", "associated_features", "margin"), each `data-<name>`.
function checks(name, choices, legend, describedAs) {
  return el("fieldset", { class: "checks", "data-group": name }, el("legend", { text: legend }),
    ...choices.map((c) => el("label", { class: "inline" },
      el("input", { type: "checkbox", value: c.value, [`data-${name}`]: c.value,
        "aria-label": describedAs ? `${c.label} (${describedAs})` : null }), c.label)));
}

let editors = 0;

// Breast lesions: add and remove, each with where it is, its size, its descriptors and category.
// `keyImages()` lists the key images a size may come from ([{id, label}]); none: not offered.
// `defaults()`: what a lesion added by the button starts with (e.g. the request's own position).
export class LesionEditor {
  constructor(root, breast, { keyImages = null, legend = "Lesion", defaults = () => ({}) } = {}) {
    this.root = root;
    this.breast = breast; // vocabulary().breast: {lesion: {field: choices}, categories}
    this.keyImages = keyImages;
    this.legend = legend;
    this.prefix = `${root.id || "lesions"}-${++editors}`;
    this.made = 0;
    this.list = el("div", { class: "lesion-list" });
    this.addButton = el("button", { type: "button", class: "add-lesion", text: `Add ${legend.toLowerCase()}`,
      onclick: () => {
        this.add(defaults()).querySelector("select").focus();
        this.changed();
      } });
    root.replaceChildren(this.list, this.addButton);
  }

  // Adding or removing a lesion is a change of the form it is in (its checks follow).
  changed() {
    this.root.dispatchEvent(new Event("change", { bubbles: true }));
  }

  add(lesion = {}) {
    const key = ++this.made;
    const lex = this.breast.lesion;
    const id = (name) => `${this.prefix}-${key}-${name}`;
    const field = (name, label, control, extra = "") => {
      control.id = id(name);
      control.dataset.field = name;
      return el("div", { class: `field ${extra}`.trim() }, el("label", { for: control.id, text: label }), control);
    };
    const choice = (name, label, choices = lex[name]) => field(name, label, options(choices));
    const sizes = Array.from({ length: SIZES }, (_, n) => el("input", { type: "number", min: "0.1",
      max: String(SIZE_MM_MAX), step: "0.1", "data-size": n, "aria-label": `Diameter ${n + 1} (mm)` }));
    sizes[0].id = id("size");
    const fromImage = this.keyImages ? el("select", { id: id("size_key_image_id"),
      "data-field": "size_key_image_id", "aria-label": "Size measured on key image" }) : null;
    const margin = checks("margin", lex.margin, "Margin: circumscribed, or not (one or more)");
    margin.addEventListener("change", (event) => this.marginRule(margin, event.target));
    const remove = el("button", { type: "button", class: "remove", text: "Remove" });
    const legend = el("legend", {}, el("span", { class: "name" }), remove);
    const box = el("fieldset", { class: "lesion", "data-lesion": "" }, legend,
      el("div", { class: "grid" },
        choice("side", "Side"),
        choice("clock", "Clock face", CLOCK),
        field("distance_from_nipple_cm", "From nipple (cm)", el("input", { type: "number", min: "0.1",
          max: String(NIPPLE_CM_MAX), step: "0.1" })),
        choice("category", "Category", this.breast.categories.map((c) => ({ value: c.value, label: c.label.replace(/ \(.*\)$/, "") })))),
      el("div", { class: "sizes" },
        el("label", { for: sizes[0].id, text: "Size (mm)" }), ...sizes.flatMap((s, n) => (n ? ["×", s] : [s])),
        fromImage ? el("label", { class: "inline", for: fromImage.id, text: "from" }) : null, fromImage),
      el("div", { class: "grid" },
        choice("shape", "Shape"),
        choice("orientation", "Orientation"),
        choice("echo_pattern", "Echo pattern"),
        choice("posterior_features", "Posterior features"),
        choice("calcifications", "Calcifications"),
        choice("special_case", "Special case")),
      margin,
      checks("associated_features", lex.associated_features, "Associated features"),
      field("note", "Note", el("input", { type: "text", maxlength: "200" }), "wide"));
    remove.addEventListener("click", () => {
      const next = box.nextElementSibling || box.previousElementSibling;
      box.remove();
      this.renumber();
      (next?.querySelector("select") || this.addButton).focus();
      this.changed();
    });
    this.list.append(box);
    this.renumber();
    this.keyImagesChanged();
    this.set(box, lesion);
    return box;
  }

  // Circumscribed alone, or one or more kinds of not circumscribed: the newest choice wins.
  marginRule(group, changed) {
    if (!changed.checked) return;
    const circumscribed = changed.value === "circumscribed";
    for (const box of group.querySelectorAll("input[data-margin]")) {
      if (box !== changed && (box.value === "circumscribed") !== circumscribed) box.checked = false;
    }
  }

  renumber() {
    [...this.list.children].forEach((box, n) => {
      box.querySelector("legend .name").textContent = `${this.legend} ${n + 1}`;
      box.querySelector("legend .remove").setAttribute("aria-label", `Remove ${this.legend.toLowerCase()} ${n + 1}`);
    });
  }

  // The key images a size may come from changed (cited or not): each choice is kept.
  keyImagesChanged() {
    if (!this.keyImages) return;
    const images = this.keyImages();
    for (const select of this.list.querySelectorAll("select[data-field='size_key_image_id']")) {
      const value = select.value;
      select.replaceChildren(el("option", { value: "", text: "—" }),
        ...images.map((k) => el("option", { value: k.id, text: k.label })));
      choose(select, value, "key image not cited");
    }
  }

  set(box, lesion) {
    for (const control of box.querySelectorAll("[data-field]")) {
      const value = lesion[control.dataset.field];
      if (control.tagName === "SELECT") choose(control, value, control.dataset.field === "size_key_image_id" ? "key image not cited" : value);
      else control.value = value ?? "";
    }
    box.querySelectorAll("input[data-size]").forEach((input, n) => { input.value = lesion.size_mm?.[n] ?? ""; });
    for (const input of box.querySelectorAll("input[data-margin]")) input.checked = (lesion.margin || []).includes(input.value);
    for (const input of box.querySelectorAll("input[data-associated_features]")) {
      input.checked = (lesion.associated_features || []).includes(input.value);
    }
  }

  read(box) {
    const lesion = {};
    for (const control of box.querySelectorAll("[data-field]")) {
      const value = control.value.trim();
      if (value) lesion[control.dataset.field] = control.type === "number" ? Number(value) : value;
    }
    const sizes = [...box.querySelectorAll("input[data-size]")].map((i) => i.value).filter((v) => v !== "").map(Number);
    if (sizes.length) lesion.size_mm = sizes;
    else delete lesion.size_key_image_id; // a key image says where a size came from
    const margin = picked(box, "input[data-margin]");
    if (margin.length) lesion.margin = margin;
    lesion.associated_features = picked(box, "input[data-associated_features]");
    return lesion;
  }

  // The lesions as the API takes them; undefined when there are none.
  value() {
    const lesions = [...this.list.children].map((box) => this.read(box));
    return lesions.length ? lesions : undefined;
  }

  fill(lesions) {
    this.list.replaceChildren();
    for (const lesion of lesions || []) this.add(lesion);
  }
}

// What one examined segment shows, as controls: thrombus, extent, flow. `label` is the segment's;
// `named`: each select says what it is for until a value is chosen (no column heading above it).
export function findingControls(dvt, segment, label, { named = false } = {}) {
  const { thrombus, extent, flow } = dvt.findings;
  return [
    options(thrombus, { "data-field": "thrombus", "aria-label": `Thrombus in the ${label}` }, named ? "Thrombus —" : "—"),
    options(extent, { "data-field": "extent", "aria-label": `Extent of the thrombus in the ${label}` }, named ? "Extent —" : "—"),
    checks("flow", flow, "Flow", `flow in the ${label}`),
  ];
}

// The finding a row's controls hold ({segment, ...}: what is chosen only).
export function readFinding(row, segment) {
  const fields = Object.fromEntries([...row.querySelectorAll("select[data-field]")].map((s) => [s.dataset.field, s.value || undefined]));
  const flow = picked(row, "input[data-flow]");
  return prune({ segment, ...fields, flow: flow.length ? flow : undefined });
}

export function fillFinding(row, finding = {}) {
  for (const select of row.querySelectorAll("select[data-field]")) choose(select, finding[select.dataset.field]);
  for (const box of row.querySelectorAll("input[data-flow]")) box.checked = (finding.flow || []).includes(box.value);
}

// The DVT report's segments: ticking one says the report covers it and opens its findings.
export class SegmentTable {
  constructor(root, dvt, segments = dvt.segments) {
    this.root = root;
    this.rows = new Map();
    root.replaceChildren(...segments.map(({ value, label }) => {
      const examined = el("input", { type: "checkbox", value, "data-examined": value });
      const row = el("div", { class: "segment", "data-segment": value, role: "group", "aria-label": capital(label) },
        el("label", { class: "inline" }, examined, capital(label)),
        options(dvt.compressibility, { "data-field": "compressibility", "aria-label": `Compressibility of the ${label}` },
          "Compression —"),
        ...findingControls(dvt, value, label, { named: true }));
      examined.addEventListener("change", () => this.show(row));
      this.rows.set(value, row);
      return row;
    }));
    for (const row of this.rows.values()) this.show(row);
  }

  show(row) {
    const open = row.querySelector("input[data-examined]").checked;
    for (const control of row.querySelectorAll("select, fieldset")) control.classList.toggle("hidden", !open);
    row.classList.toggle("open", open);
  }

  examined() {
    return [...this.rows.keys()].filter((s) => this.rows.get(s).querySelector("input[data-examined]").checked);
  }

  // The findings of the examined segments that say something beyond the segment.
  findings() {
    const found = this.examined().map((s) => readFinding(this.rows.get(s), s)).filter((f) => Object.keys(f).length > 1);
    return found.length ? found : undefined;
  }

  fill(examined = [], findings = []) {
    const by = new Map(findings.map((f) => [f.segment, f]));
    for (const [segment, row] of this.rows) {
      row.querySelector("input[data-examined]").checked = examined.includes(segment) || by.has(segment);
      fillFinding(row, by.get(segment));
      this.show(row);
    }
  }
}

// How a lesion is said in one line, in the lexicon's words.
export function sayLesion(lesion, breast) {
  const said = (field, value) => labelOf(breast?.lesion[field], value);
  const category = breast?.categories.find((c) => c.value === lesion.category)?.label.replace(/ \(.*\)$/, "")
    ?? (lesion.category && `BI-RADS ${lesion.category}`);
  const where = [lesion.side && capital(said("side", lesion.side)), lesion.clock && `${lesion.clock} o'clock`,
    lesion.distance_from_nipple_cm && `${lesion.distance_from_nipple_cm} cm from the nipple`].filter(Boolean).join(" ");
  const size = lesion.size_mm?.length && `${lesion.size_mm.join(" × ")} mm${lesion.size_key_image_id ? " (measured on a key image)" : ""}`;
  const words = ["shape", "orientation", "echo_pattern", "posterior_features", "calcifications", "special_case"]
    .filter((f) => lesion[f]).map((f) => (f === "posterior_features" ? `posterior ${said(f, lesion[f])}` : said(f, lesion[f])));
  const margin = lesion.margin?.length && `margin ${lesion.margin.map((m) => said("margin", m)).join(", ")}`;
  const associated = lesion.associated_features?.map((a) => said("associated_features", a)).join(", ");
  return [where, size, [...words, margin].filter(Boolean).join(", "), associated, category, lesion.note]
    .filter(Boolean).join("; ");
}

// How an examined segment is said in one line.
export function saySegment(finding, dvt) {
  const segment = labelOf(dvt?.segments, finding.segment);
  return `${capital(segment)}: ${[finding.compressibility && labelOf(dvt?.compressibility, finding.compressibility),
    finding.thrombus && `thrombus ${labelOf(dvt?.findings.thrombus, finding.thrombus)}`,
    finding.extent && labelOf(dvt?.findings.extent, finding.extent),
    finding.flow?.length && `flow ${finding.flow.map((f) => labelOf(dvt?.findings.flow, f)).join(", ")}`].filter(Boolean).join(", ") || "examined"}`;
}
