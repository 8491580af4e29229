// The expert's structured report: a draft saved as it is written, the server's rules shown
// (what signing still needs, ambiguous terms), signing, addenda, and a printable document.
import { api, apiBlob, describe } from "./api.js";
import { $, el } from "./dom.js";
import { LesionEditor, SegmentTable, sayLesion, saySegment, vocabulary } from "./lexicon.js";

const SIGN_CONFIRM_MS = 6000;
// The rules are asked again this long after the expert stops typing (nothing is saved).
const CHECK_DELAY_MS = 500;
const CONCORDANCE = { agree: "Agree", minor_discrepancy: "Minor discrepancy", major_discrepancy: "Major discrepancy" };
const QUALITY = { adequate: "Adequate", limited: "Limited", non_diagnostic: "Non-diagnostic" };
const REASONS = { missing_landmarks: "missing landmarks", poor_image_quality: "poor image quality", incomplete_protocol: "incomplete protocol" };

const BUSY_BUTTONS = ["report-save", "report-sign", "addendum-add"];


export class ReportForm {
  constructor(token, consultation, { readOnly = false } = {}) {
    this.token = token;
    this.consultation = consultation; // {id, clinical_question, ...} from room_state
    this.url = `/api/consultations/${consultation.id}/report`;
    this.keyImages = new Map();
    this.view = null;
    this.vocabulary = null; // the lexicon (GET /api/vocabulary)
    this.lesions = null; // breast: the lesion editor
    this.segments = null; // DVT: the segments covered and what each shows
    this.readOnly = readOnly;
    this.armed = null;
    this.busy = false;
    this.typed = false; // the expert has typed or chosen something in the form
    this.checkTimer = null;
    this.checks = 0; // the newest check's number: an older answer is not shown over a newer one
    for (const kind of ["input", "change"]) {
      $("report-form").addEventListener(kind, () => {
        this.typed = true;
        this.checkSoon();
      });
    }
    $("report-save").addEventListener("click", () => this.once(() => this.save()));
    $("report-sign").addEventListener("click", (event) => this.sign(event));
    $("addendum-add").addEventListener("click", () => this.once(() => this.addendum()));
    $("report-print").addEventListener("click", () => window.print());
    for (const button of document.querySelectorAll("[data-report-pdf]")) button.addEventListener("click", () => this.pdf());
    $("report-quality").addEventListener("change", () => this.showReasons());
    // A lesion's size may come from a cited key image: the choice follows the citations.
    $("report-key-images").addEventListener("change", () => this.lesions?.keyImagesChanged());
    if (readOnly) $("report-form").classList.add("hidden");
  }

  async load() {
    try {
      const [words, view] = await Promise.all([vocabulary(this.token), api(this.token, this.url)]);
      this.vocabulary = words;
      this.render(view);
    } catch (error) {
      this.status(describe(error), true);
    }
  }

  addKeyImage(k) {
    if (this.keyImages.has(k.id)) return;
    const box = el("input", { type: "checkbox", value: k.id, "data-key-image": k.id });
    this.keyImages.set(k.id, box);
    const n = this.keyImages.size;
    $("report-key-images").append(el("label", { class: "inline" }, box, `${k.kind} ${n}`));
    this.lesions?.keyImagesChanged();
  }

  // The cited key images a lesion's size may come from.
  citedImages() {
    return [...this.keyImages.entries()].filter(([, box]) => box.checked)
      .map(([id, box]) => ({ id, label: box.parentElement.textContent.trim() }));
  }

  body() {
    const text = (id) => $(id).value.trim() || undefined;
    const grade = $("report-quality").value;
    const reasons = [...$("quality-reasons").querySelectorAll("input[type=checkbox]:checked")].map((i) => i.value);
    const body = {
      findings: text("report-findings"),
      category: $("report-category").value || undefined,
      recommendation: text("report-recommendation"),
      concordance: $("report-concordance").value || undefined,
      technical_quality: grade ? { grade, reasons, note: text("report-quality-note") } : undefined,
      key_image_ids: [...this.keyImages.entries()].filter(([, box]) => box.checked).map(([id]) => id),
      segments_examined: this.segments ? this.segments.examined() : undefined,
      segment_findings: this.segments?.findings(),
      lesions: this.lesions?.value(),
    };
    return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
  }

  // Contradictions and the rest of the rules, shown as the expert writes (POST .../check).
  checkSoon() {
    if (this.readOnly || this.view?.signed) return;
    clearTimeout(this.checkTimer);
    this.checkTimer = setTimeout(async () => {
      const mine = ++this.checks;
      try {
        const rules = await api(this.token, `${this.url}/check`, { method: "POST", json: this.body() });
        if (mine === this.checks) this.rules(rules);
      } catch {
        // A body the server refuses is named when it is saved; the advice shown stays.
      }
    }, CHECK_DELAY_MS);
  }

  async save() {
    this.checks++; // a check still on its way is older than what saving returns
    try {
      this.render(await api(this.token, this.url, { method: "PUT", json: this.body() }));
      this.status("Draft saved");
      return true;
    } catch (error) {
      this.status(describe(error), true);
      return false;
    }
  }

  // One request at a time: a double click must not save twice or sign a second addendum.
  async once(action) {
    if (this.busy) return;
    this.busy = true;
    for (const id of BUSY_BUTTONS) $(id).setAttribute("aria-disabled", "true");
    try {
      await action();
    } finally {
      this.busy = false;
      for (const id of BUSY_BUTTONS) $(id).removeAttribute("aria-disabled");
    }
  }

  // Two steps: signing cannot be undone. The confirming click must be a click of its own:
  // the second click of a double click (detail 2) would skip the confirmation.
  sign(event) {
    if (this.busy || (this.armed && event?.detail > 1)) return;
    if (!this.armed) {
      $("report-sign").textContent = "Click again to sign: it cannot be undone";
      this.armed = setTimeout(() => this.disarm(), SIGN_CONFIRM_MS);
      return;
    }
    this.disarm();
    return this.once(async () => {
      if (!(await this.save())) return;
      try {
        this.render(await api(this.token, `${this.url}/sign`, { method: "POST" }));
        this.status("Signed");
      } catch (error) {
        this.status(describe(error), true);
      }
    });
  }

  disarm() {
    clearTimeout(this.armed);
    this.armed = null;
    $("report-sign").textContent = "Sign report";
  }

  async addendum() {
    const text = $("addendum-text").value.trim();
    if (!text) return this.status("Write the addendum first.", true);
    try {
      this.render(await api(this.token, `${this.url}/addenda`, { method: "POST", json: { text } }));
      $("addendum-text").value = "";
      this.status("Addendum signed");
    } catch (error) {
      this.status(describe(error), true);
    }
  }

  // The fileable PDF, made by the server (a draft's says DRAFT), saved under the accession.
  async pdf() {
    try {
      const blob = await apiBlob(this.token, `${this.url}/pdf`);
      const name = `report-${this.consultation.accession_number || this.consultation.id}.pdf`;
      const link = el("a", { href: URL.createObjectURL(blob), download: name });
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      this.status(`PDF: ${describe(error)}`, true);
    }
  }

  status(message, isError = false) {
    $("report-status").textContent = message;
    $("report-status").className = isError ? "error" : "muted";
    if (isError) $("error").textContent = message;
  }

  showReasons() {
    const grade = $("report-quality").value;
    $("quality-reasons").classList.toggle("hidden", !grade || grade === "adequate");
  }

  render(view) {
    const first = this.view === null;
    this.view = view;
    const c = this.consultation;
    $("report-request").textContent = [c.clinical_question, view.first_read && `First read: ${view.first_read}`,
      c.incomplete_reason && `Sent incomplete: ${c.incomplete_reason}`].filter(Boolean).join(" · ");
    $("report-flags").replaceChildren(...view.flags.map((f) => el("li", { class: "error", "data-flag": f.code, text: `⚑ ${f.message}` })));
    $("category-field").classList.toggle("hidden", !view.categories.length);
    $("concordance-field").classList.toggle("hidden", !view.first_read);
    if (first) {
      $("report-category").replaceChildren(el("option", { value: "", text: "—" }),
        ...view.categories.map((k) => el("option", { value: k.value, text: k.label })));
      // The lexicon: a breast report's lesions, a DVT report's segments and what each shows.
      const words = this.vocabulary;
      if (view.segments.length && words?.dvt) this.segments = new SegmentTable($("report-segments"), words.dvt, view.segments);
      $("report-segments-field").classList.toggle("hidden", !this.segments);
      if (view.application === "breast" && words?.breast) {
        this.lesions = new LesionEditor($("report-lesions"), words.breast, { keyImages: () => this.citedImages() });
      }
      $("report-lesions-field").classList.toggle("hidden", !this.lesions);
      // A late first load (after a reconnection) must not replace what the expert typed.
      const body = view.current?.body;
      if (body && !this.typed) this.fill(body);
    }
    this.rules(view);
    this.showReasons();
    $("report-form").classList.toggle("hidden", view.signed || this.readOnly);
    $("report-signed").classList.toggle("hidden", !view.signed);
    // Only the expert adds addenda: an observer would only be refused.
    for (const id of ["addendum-text", "addendum-add"]) $(id).classList.toggle("hidden", this.readOnly);
    $("addendum-text").labels[0].classList.toggle("hidden", this.readOnly);
    if (view.signed) this.document(view);
  }

  // What the rules say: contradictions (a hard one blocks signing), terms, what is missing.
  rules(view) {
    // Where the second read differs from the structured first read, field by field.
    const differences = view.differences || [];
    const said = (value) => (value === null || value === undefined || value === "" ? "not stated" : String(value));
    $("report-differences").replaceChildren(...differences.map((d) => el("li", { "data-field": d.field },
      el("strong", { text: `${d.label}: ` }), el("span", { class: "first", text: said(d.first) }), " → ",
      el("span", { class: "second", text: said(d.second) }))));
    $("report-differences-field").classList.toggle("hidden", !differences.length);
    $("report-consistency").replaceChildren(...view.consistency.map((c) => el("li",
      { "data-field": c.field, class: c.hard ? "hard" : "" },
      el("strong", { text: c.hard ? "⚠ Blocks signing: " : "⚠ Check: " }), c.message)));
    $("report-terminology").replaceChildren(...view.terminology.map((t) => el("li", { "data-phrase": t.phrase },
      el("strong", { text: `“${t.phrase}” → “${t.preferred}”` }), el("span", { class: "why", text: ` ${t.why}` }))));
    $("report-missing").replaceChildren(...view.missing_for_signing.map((m) => el("li", { "data-field": m.field },
      el("strong", { text: m.label }), el("span", { class: "why", text: m.why }))));
  }

  fill(body) {
    this.segments?.fill(body.segments_examined, body.segment_findings);
    $("report-findings").value = body.findings || "";
    $("report-recommendation").value = body.recommendation || "";
    $("report-category").value = body.category || "";
    $("report-concordance").value = body.concordance || "";
    $("report-quality").value = body.technical_quality?.grade || "";
    $("report-quality-note").value = body.technical_quality?.note || "";
    for (const box of $("quality-reasons").querySelectorAll("input[type=checkbox]")) {
      box.checked = (body.technical_quality?.reasons || []).includes(box.value);
    }
    for (const id of body.key_image_ids || []) {
      if (!this.keyImages.has(id)) this.addKeyImage({ id, kind: "key image" });
      this.keyImages.get(id).checked = true;
    }
    this.lesions?.fill(body.lesions); // after the key images: a size may come from one
  }

  // The signed report as a document: what the print-out shows.
  document(view) {
    const body = view.current.body;
    const category = view.categories.find((k) => k.value === body.category)?.label;
    const quality = body.technical_quality;
    const rows = [
      ["Consultation", this.consultation.id],
      ["Accession", this.consultation.accession_number],
      ["Question", this.consultation.clinical_question],
      ["First read", view.first_read],
      ["Category", category],
      ["Findings", body.findings],
      ["Recommendation", body.recommendation],
      ["Concordance with the first read", CONCORDANCE[body.concordance]],
      ["Venous segments examined", body.segments_examined
        ?.map((v) => view.segments.find((s) => s.value === v)?.label || v).join(", ")],
      ["Segment findings", body.segment_findings?.map((f) => saySegment(f, this.vocabulary?.dvt)).join("\n")],
      ["Lesions", body.lesions?.map((l, n) => `${n + 1}. ${sayLesion(l, this.vocabulary?.breast)}`).join("\n")],
      ["Technical quality", quality && [QUALITY[quality.grade], ...quality.reasons.map((r) => REASONS[r]), quality.note].filter(Boolean).join(", ")],
      ["Signed", `${new Date(view.current.signed_at).toLocaleString()} by ${view.current.signed_by_name || view.current.signed_by}`],
    ].filter(([, v]) => v);
    $("report-document").replaceChildren(
      el("h3", { text: "Second opinion" }),
      el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
      el("h4", { text: "Key images cited" }),
      el("div", { class: "cited" }, ...body.key_image_ids.map((id, n) => this.cited(id, n + 1))),
      ...view.addenda.map((a) => el("div", { class: "addendum" },
        el("h4", { text: `Addendum, ${new Date(a.signed_at).toLocaleString()} by ${a.author_name || a.author}` }),
        el("p", { text: a.text }))),
    );
  }

  // A cited key image as the print-out shows it: its picture and which one it is.
  cited(id, n) {
    const img = el("img", { alt: `Key image ${n}`, "data-cited": id });
    apiBlob(this.token, `/api/key-images/${id}/preview`).then((blob) => {
      img.src = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    }, (error) => { img.alt = `Key image ${n}: ${describe(error)}`; });
    return el("figure", {}, img, el("figcaption", { text: `Key image ${n} · ${id.slice(0, 8)}` }));
  }
}
