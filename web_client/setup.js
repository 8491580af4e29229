// Device setup (coordinator): a setup session (no patient) shows the scanner's live frame as the
// server has it; the text tesseract reads on it is proposed as mask rectangles; the coordinator
// adds, moves, resizes and deletes them, marks the picture region, previews the masked frame with
// what is still read, and saves the profile (POST /api/device-profiles). No frame is stored.
import { api, describe } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { $, el } from "./lib/dom.js";

// Nothing of the page runs before its link is accepted (lib/gate.js).
const { token } = await admit("setup");
const PAD = 4; // pixels around a proposed line of text
const HANDLE = 14; // the lower right corner that resizes, in frame pixels
let session = null; // the setup consultation's id
let frame = null; // { width, height, image }
let rects = []; // [x, y, w, h] in frame pixels
let picture = null; // [x, y, w, h] or null
let selected = -1; // index in rects, or "picture"
let drag = null;

function fail(error) {
  $("error").textContent = describe(error);
}

function status(text) {
  $("status").textContent = text;
}

function clearError() {
  $("error").textContent = "";
}

async function startSession() {
  clearError();
  const manufacturer = $("manufacturer").value.trim(), model = $("model").value.trim();
  if (!manufacturer || !model) {
    fail(new Error("name the scanner's manufacturer and model first"));
    return;
  }
  try {
    const made = await api(token, "/api/consultations", {
      method: "POST",
      json: {
        kind: "device_setup",
        clinical_question: "Device setup (no patient)",
        urgency: "routine",
        device: { manufacturer, model },
      },
    });
    session = made.id;
    const invite = await api(token, `/api/consultations/${session}/invites`, {
      method: "POST",
      json: { role: "operator", name: "Scanner setup" },
    });
    $("bedside-link").href = invite.url;
    $("bedside-link").textContent = "the bedside link";
    $("bedside").classList.remove("hidden");
    $("start").disabled = true;
    $("manufacturer").disabled = $("model").disabled = true;
    $("look").disabled = $("end").disabled = false;
    status("Setup session started: waiting for the scanner's video.");
  } catch (error) {
    fail(error);
  }
}

async function endSession() {
  clearError();
  try {
    await api(token, `/api/consultations/${session}/cancel`, {
      method: "POST",
      json: { reason: "no_longer_needed", note: "device setup finished" },
    });
    $("look").disabled = $("end").disabled = true;
    status("Setup session ended.");
  } catch (error) {
    fail(error);
  }
}

async function look() {
  clearError();
  try {
    const seen = await api(token, `/api/consultations/${session}/setup/frame`, { method: "POST" });
    frame = seen;
    rects = seen.lines.map((line) => padded(line.box, seen.width, seen.height));
    picture = null;
    selected = -1;
    $("editor").classList.remove("hidden");
    $("size").textContent = `${seen.width}×${seen.height}`;
    await drawFrame();
    showRead(seen, $("masked"), false);
    const found = seen.lines.filter((line) => line.found.length).length;
    status(`${seen.lines.length} lines of text read; ${found} look like patient data. ` +
      "Check every box, add any text it missed, then preview.");
  } catch (error) {
    fail(error);
  }
}

function padded([x, y, w, h], width, height) {
  const x0 = Math.max(0, x - PAD), y0 = Math.max(0, y - PAD);
  return [x0, y0, Math.min(width, x + w + PAD) - x0, Math.min(height, y + h + PAD) - y0];
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the frame could not be shown"));
    image.src = src;
  });
}

async function drawFrame() {
  const canvas = $("frame");
  canvas.width = frame.width;
  canvas.height = frame.height;
  frame.bitmap = await loadImage(frame.image);
  redraw();
}

function redraw() {
  const canvas = $("frame"), g = canvas.getContext("2d");
  g.drawImage(frame.bitmap, 0, 0);
  g.lineWidth = 3;
  rects.forEach((r, i) => {
    g.fillStyle = "rgba(220, 40, 40, 0.35)";
    g.fillRect(...r);
    g.strokeStyle = i === selected ? "#ffd400" : "#ff5050";
    g.strokeRect(...r);
  });
  if (picture) {
    g.strokeStyle = selected === "picture" ? "#ffd400" : "#3fb950";
    g.setLineDash([10, 6]);
    g.strokeRect(...picture);
    g.setLineDash([]);
  }
  $("remove").disabled = selected === -1;
}

async function showRead(seen, canvas, draw) {
  const list = $("read");
  list.replaceChildren(...seen.lines.map((line) => el("li", { class: line.found.length ? "found" : "" },
    line.found.length ? `Refused as ${line.found.join(", ")}: ` : "Allowed: ",
    el("span", { text: line.text }),
    el("span", { class: "muted", text: ` (at ${line.box[0]}, ${line.box[1]})` }))));
  if (!seen.lines.length) list.append(el("li", { class: "muted", text: "No text read." }));
  if (draw) {
    canvas.width = seen.width;
    canvas.height = seen.height;
    canvas.getContext("2d").drawImage(await loadImage(seen.image), 0, 0);
  }
}

function draft() {
  return { width: frame.width, height: frame.height, mask: rects, picture };
}

async function preview() {
  clearError();
  if (!rects.length) {
    fail(new Error("a profile masks at least one rectangle"));
    return;
  }
  try {
    const seen = await api(token, `/api/consultations/${session}/setup/frame`, {
      method: "POST",
      json: draft(),
    });
    await showRead(seen, $("masked"), true);
    status(seen.refused.length
      ? `Still read outside the picture region: ${seen.refused.join(", ")}. Captures would be refused.`
      : "Nothing that looks like patient data is read on the masked frame.");
  } catch (error) {
    fail(error);
  }
}

async function save() {
  clearError();
  try {
    const saved = await api(token, "/api/device-profiles", {
      method: "POST",
      json: {
        manufacturer: $("manufacturer").value.trim(),
        model: $("model").value.trim(),
        ...draft(),
        note: "measured on the device setup page",
      },
    });
    status(`Profile saved (version ${saved.version}): captures from this scanner are masked by it now.`);
  } catch (error) {
    fail(error);
  }
}

// Editing: pointer positions in frame pixels.
function at(event) {
  const canvas = $("frame"), box = canvas.getBoundingClientRect();
  return [
    Math.round((event.clientX - box.left) * canvas.width / box.width),
    Math.round((event.clientY - box.top) * canvas.height / box.height),
  ];
}

function inside([px, py], [x, y, w, h]) {
  return px >= x && py >= y && px <= x + w && py <= y + h;
}

function clamp(r) {
  let [x, y, w, h] = r.map(Math.round);
  x = Math.max(0, Math.min(x, frame.width - 1));
  y = Math.max(0, Math.min(y, frame.height - 1));
  w = Math.max(1, Math.min(w, frame.width - x));
  h = Math.max(1, Math.min(h, frame.height - y));
  return [x, y, w, h];
}

function pointerDown(event) {
  if (!frame) return;
  const p = at(event);
  $("frame").setPointerCapture(event.pointerId);
  const hit = rects.findIndex((r) => inside(p, r));
  const target = hit !== -1 ? hit : (picture && inside(p, picture) && mode() === "picture" ? "picture" : -1);
  if (target !== -1) {
    const r = target === "picture" ? picture : rects[target];
    const corner = p[0] >= r[0] + r[2] - HANDLE && p[1] >= r[1] + r[3] - HANDLE;
    selected = target;
    drag = { kind: corner ? "resize" : "move", start: p, from: [...r] };
  } else {
    selected = -1;
    drag = { kind: "new", start: p };
  }
  redraw();
}

function pointerMove(event) {
  if (!drag) return;
  const [px, py] = at(event), [sx, sy] = drag.start;
  if (drag.kind === "new") {
    drag.rect = [Math.min(px, sx), Math.min(py, sy), Math.abs(px - sx), Math.abs(py - sy)];
    redraw();
    const g = $("frame").getContext("2d");
    g.strokeStyle = "#ffd400";
    g.strokeRect(...drag.rect);
    return;
  }
  const [x, y, w, h] = drag.from;
  const moved = drag.kind === "move"
    ? clamp([x + px - sx, y + py - sy, w, h])
    : clamp([x, y, w + px - sx, h + py - sy]);
  if (selected === "picture") picture = moved;
  else rects[selected] = moved;
  redraw();
}

function pointerUp() {
  if (drag?.kind === "new" && drag.rect && drag.rect[2] >= 3 && drag.rect[3] >= 3) {
    const rect = clamp(drag.rect);
    if (mode() === "picture") {
      picture = rect;
      selected = "picture";
    } else {
      rects.push(rect);
      selected = rects.length - 1;
    }
  }
  drag = null;
  redraw();
}

function mode() {
  return document.querySelector('input[name="draw"]:checked').value;
}

function removeSelected() {
  if (selected === "picture") picture = null;
  else if (selected !== -1) rects.splice(selected, 1);
  selected = -1;
  redraw();
}

$("queue-link").href = `/queue#token=${encodeURIComponent(token)}`;
$("device").classList.remove("hidden");
const given = new URLSearchParams(location.hash.slice(1));
$("manufacturer").value = given.get("manufacturer") || "";
$("model").value = given.get("model") || "";
$("start").addEventListener("click", startSession);
$("end").addEventListener("click", endSession);
$("look").addEventListener("click", look);
$("preview").addEventListener("click", preview);
$("save").addEventListener("click", save);
$("remove").addEventListener("click", removeSelected);
const canvas = $("frame");
canvas.addEventListener("pointerdown", pointerDown);
canvas.addEventListener("pointermove", pointerMove);
canvas.addEventListener("pointerup", pointerUp);
document.addEventListener("keydown", (event) => {
  if (event.key === "Delete" && selected !== -1 && document.activeElement?.tagName !== "INPUT") {
    removeSelected();
  }
});
