// The request as the expert reads it: the clinical context the bedside sent (device,
// transducer, modes and Doppler settings, anatomy, technique, the application's own fields)
// and what the reviewer's checklist still finds missing. Text only, from the record.
import { api, describe } from "./api.js";
import { el } from "./dom.js";
import { sayLesion, saySegment, vocabulary } from "./lexicon.js";

const MODES = {
  b_mode: "B-mode", m_mode: "M-mode", color_doppler: "colour Doppler", power_doppler: "power Doppler",
  spectral_doppler: "spectral Doppler", elastography: "elastography", contrast: "contrast",
};

function words(value) {
  return String(value).replaceAll("_", " ");
}

// [label, text] rows for what the request gives; nothing for what it does not.
function rows(c, lexicon) {
  const device = c.device && [c.device.manufacturer, c.device.model].filter(Boolean).join(" ");
  const probe = c.transducer && [c.transducer.model, c.transducer.type && words(c.transducer.type),
    c.transducer.frequency_mhz && `${c.transducer.frequency_mhz} MHz`].filter(Boolean).join(", ");
  const doppler = c.doppler && Object.entries(c.doppler).map(([k, v]) => `${words(k)} ${v}`).join(", ");
  const breast = c.breast && [c.breast.lesion_clock && `${c.breast.lesion_clock} o'clock`,
    c.breast.distance_from_nipple_cm && `${c.breast.distance_from_nipple_cm} cm from the nipple`,
    c.breast.first_read_birads && `first read BI-RADS ${c.breast.first_read_birads}`,
    c.breast.additional_imaging && `asks for ${c.breast.additional_imaging}`].filter(Boolean).join("; ");
  const dvt = c.dvt && [
    ...(c.dvt.segments_examined || []).map((s) => `${words(s)}: ${words(c.dvt.compressibility?.[s] || "not graded")}`),
    c.dvt.symptoms_persist_after_negative === true && "symptoms persist after a negative scan",
    c.dvt.prior_scan && `prior scan ${c.dvt.prior_scan}`].filter(Boolean).join("; ");
  return [
    ["Application", c.application && words(c.application)],
    ["Exam objective", c.exam_objective],
    ["First read", c.first_read],
    ["Device", device],
    ["Transducer", probe],
    ["Modes", c.imaging_modes?.map((m) => MODES[m] || m).join(", ")],
    ["Doppler", doppler],
    ["Anatomy", c.anatomy?.join(", ")],
    ["Laterality", c.laterality && words(c.laterality)],
    ["Patient position", c.patient_position],
    ["Transducer orientation", c.transducer_orientation],
    ["Comparison", c.comparison_studies && (c.comparison_studies.join(", ") || "none")],
    ["Breast", breast],
    ["DVT", dvt],
    // The structured first read (the lexicon), when the request gave one.
    ["First-read lesions", c.breast?.first_read_lesions?.map((l, n) => `${n + 1}. ${sayLesion(l, lexicon?.breast)}`).join("\n")],
    ["First-read segments", c.dvt?.first_read_segments?.map((f) => saySegment(f, lexicon?.dvt)).join("\n")],
    ["Sent incomplete", c.incomplete_reason],
  ].filter(([, v]) => v);
}

export async function showRequest(token, consultationId, root) {
  try {
    const record = await api(token, `/api/consultations/${consultationId}`);
    const lexicon = await vocabulary(token).catch(() => null); // values said as in the lexicon
    root.replaceChildren(
      el("dl", { class: "context" }, ...[
        ["Accession", record.accession_number],
        ["Patient reference", record.context.patient_ref],
        ...rows(record.context, lexicon),
      ].filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
      record.checklist.missing.length
        ? el("p", { class: "muted", text: `Not given: ${record.checklist.missing.map((m) => m.label).join(", ")}.` })
        : el("p", { class: "muted", text: "The checklist is complete." }),
    );
  } catch (error) {
    root.replaceChildren(el("p", { class: "error", text: `The request could not be loaded: ${describe(error)}` }));
  }
}
