// Expert page (observers get the same page without the tools): the operator's live video at
// its own aspect ratio, voice both ways, pointer and marks drawn on the picture, probe guidance,
// captures decoded by the relay from the exact stream on screen, key images, stream statistics.
import { api, claims, describe } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { CAPTURE_BUTTONS, Captures } from "./lib/captures.js";
import { $, el } from "./lib/dom.js";
import { Overlay, toNormalized } from "./lib/overlay.js";
import { PictureWatch } from "./lib/picture.js";
import { ReportForm } from "./lib/report.js";
import { showRequest } from "./lib/request.js";
import { Room } from "./lib/room.js";
import { Viewer } from "./lib/viewer.js";

const POINTER_INTERVAL_MS = 33; // 30 Hz, under the server's per-socket limit
const FREEHAND_POINTS_MAX = 500;
const FREEHAND_STEP = 0.004; // normalized distance between kept freehand points
const TOOL_KEYS = { p: "pointer", a: "arrow", c: "circle", f: "freehand", t: "text", l: "caliper", d: "calibration" };
const ACTION_KEYS = new Set(["x", "g", "h", "s", "k", "r"]);

// Nothing of the page runs before its link is accepted (lib/gate.js).
const { token } = await admit("expert");
const video = $("video");
const overlay = new Overlay($("overlay"), video);
const room = new Room(token, overlay);
const picture = new PictureWatch(video, showPicture);
room.picture = () => picture.state;
const captures = new Captures(room, { fail });
let report = null, microphoneStream = null;
// The guidance directions each cue takes, from the server (GET /api/vocabulary).
let directions = {};
let tool = "pointer", drawing = null, lastPointer = 0, mediaTs = null, role = "expert";

function fail(error) {
  room.alert(describe(error));
}

async function call(event, payload, timeoutMs) {
  room.clearError();
  try {
    return await room.live.call(event, payload, timeoutMs);
  } catch (error) {
    fail(error);
    return null;
  }
}

// The RTP timestamp of the frame on screen, so marks and captures name the exact frame.
function trackFrames() {
  if (!video.requestVideoFrameCallback) return;
  const tick = (_now, meta) => {
    if (meta.rtpTimestamp !== undefined) mediaTs = meta.rtpTimestamp >>> 0;
    $("video-size").textContent = `${video.videoWidth}×${video.videoHeight}`;
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

function withTs(payload) {
  return mediaTs === null ? payload : { ...payload, media_ts: mediaTs };
}

function selectTool(name) {
  tool = name;
  for (const b of $("tools").querySelectorAll("[data-tool]")) {
    b.setAttribute("aria-pressed", String(b.dataset.tool === name));
  }
  $("stage").style.cursor = name === "pointer" ? "crosshair" : "cell";
}

function draft(points) {
  const mark = { kind: drawing.kind, points, author_role: role };
  overlay.setDraft(mark);
  return mark;
}

function pointerDown(event) {
  if (role !== "expert") return;
  const at = toNormalized(video, event.clientX, event.clientY);
  if (!at) return;
  const p = [at.x, at.y];
  if (tool === "pointer") return pointerMove(event);
  if (tool === "text") {
    const text = $("label-text").value.trim();
    if (!text) return fail(new Error("Type the label's text first (the field beside the tools)."));
    call("mark", withTs({ kind: "text", points: [p], text }));
    return;
  }
  $("stage").setPointerCapture(event.pointerId);
  drawing = { kind: tool, points: [p, p] };
  if (tool === "freehand") drawing.points = [p];
  draft(drawing.points);
}

function pointerMove(event) {
  const at = toNormalized(video, event.clientX, event.clientY);
  if (!at || role !== "expert") return;
  if (drawing) {
    const p = [at.x, at.y];
    if (drawing.kind === "freehand") {
      const last = drawing.points[drawing.points.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= FREEHAND_STEP && drawing.points.length < FREEHAND_POINTS_MAX) {
        drawing.points.push(p);
      }
    } else {
      drawing.points[1] = p;
    }
    draft(drawing.points);
  } else if (tool === "pointer" && performance.now() - lastPointer >= POINTER_INTERVAL_MS) {
    lastPointer = performance.now();
    room.live.send("pointer", withTs({ x: at.x, y: at.y }));
  }
}

async function pointerUp() {
  if (!drawing) return;
  const { kind, points } = drawing;
  drawing = null;
  overlay.setDraft(null);
  const tooSmall = kind !== "freehand" && Math.hypot(points[1][0] - points[0][0], points[1][1] - points[0][1]) < 0.005;
  if (tooSmall || (kind === "freehand" && points.length < 2)) return;
  const mark = { kind, points };
  if (kind === "calibration") {
    // Two marks of the depth scale; the distance between them is typed first, in mm.
    mark.mm = Number($("label-text").value.trim().replace(",", "."));
    if (!(mark.mm > 0 && mark.mm <= 1000)) return fail(new Error("Type the distance between the two depth-scale marks in mm first (the field beside the tools)."));
  }
  await call("mark", withTs(mark));
}

// The keyboard on the picture (it takes focus): arrow keys move a cursor (Shift: faster), Enter
// points or places the mark's next point; two Enters make an arrow, circle or caliper,
// freehand takes points until Space ends it; Escape cancels.
const KEY_STEP = 0.01;
const KEY_STEP_FAST = 0.05;
const KEY_MOVES = { arrowleft: [-1, 0], arrowright: [1, 0], arrowup: [0, -1], arrowdown: [0, 1] };
const cursor = { x: 0.5, y: 0.5 };

function showCursor() {
  overlay.setPointer("keyboard", cursor.x, cursor.y);
  if (drawing) {
    const points = drawing.kind === "freehand" ? [...drawing.points, [cursor.x, cursor.y]] : [drawing.points[0], [cursor.x, cursor.y]];
    draft(points);
  }
}

async function placeAtCursor() {
  const p = [cursor.x, cursor.y];
  if (tool === "pointer") return room.live.send("pointer", withTs({ x: p[0], y: p[1] }));
  if (tool === "text") {
    const text = $("label-text").value.trim();
    if (!text) return fail(new Error("Type the label's text first (the field beside the tools)."));
    return call("mark", withTs({ kind: "text", points: [p], text }));
  }
  if (!drawing) {
    drawing = { kind: tool, points: [p] };
    return showCursor();
  }
  if (drawing.kind === "freehand") {
    if (drawing.points.length < FREEHAND_POINTS_MAX) drawing.points.push(p);
    return showCursor();
  }
  drawing.points = [drawing.points[0], p];
  await pointerUp();
}

function stageKey(event) {
  if (role !== "expert" || event.ctrlKey || event.metaKey || event.altKey) return false;
  const key = event.key.toLowerCase();
  const move = KEY_MOVES[key];
  if (move) {
    const step = event.shiftKey ? KEY_STEP_FAST : KEY_STEP;
    cursor.x = Math.min(1, Math.max(0, cursor.x + move[0] * step));
    cursor.y = Math.min(1, Math.max(0, cursor.y + move[1] * step));
    showCursor();
  } else if (key === "enter") {
    placeAtCursor();
  } else if (key === " " && drawing?.kind === "freehand") {
    pointerUp();
  } else {
    return false;
  }
  event.preventDefault();
  return true;
}

function fillDirections() {
  const choices = directions[$("cue").value] || [];
  $("direction").replaceChildren(...choices.map((d) => el("option", { value: d, text: d.replaceAll("_", " ") })));
  $("direction").disabled = !choices.length;
}

async function guide(cue) {
  const body = { cue };
  if (directions[cue]?.length) body.direction = $("direction").value;
  const note = $("guidance-note").value.trim();
  if (note) body.note = note;
  if (await call("guidance", body)) $("guidance-note").value = "";
}

function showStats(participants) {
  $("stats").replaceChildren(...participants.map((p) => el("tr", {},
    el("td", { text: p.role }),
    el("td", { text: `${Math.round(p.bitrate_in_kbps ?? 0)} / ${Math.round(p.bitrate_out_kbps ?? 0)}` }),
    el("td", { text: p.frame_rate != null ? p.frame_rate.toFixed(0) : "–" }),
    el("td", { text: p.packet_loss_percent != null ? `${p.packet_loss_percent.toFixed(1)}%` : "–" }),
    el("td", { text: p.rtt_ms != null ? `${Math.round(p.rtt_ms)} ms` : "–" }),
  )));
}

async function microphone() {
  if (role !== "expert" || !$("mic").checked) return null;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    const why = error?.name === "NotAllowedError" ? "the browser was refused the microphone" : describe(error);
    room.alert(`Listening only (no microphone): ${why}.`);
    $("mic").checked = false;
    return null;
  }
}

// Talk on or off renegotiates with a new stream; the previous microphone is released, or it
// would stay open (and the browser's recording indicator on) after "Talk" is unticked.
let starting = Promise.resolve();
function startMedia() {
  starting = starting.then(async () => {
    const stream = await microphone();
    for (const track of microphoneStream?.getTracks() || []) track.stop();
    microphoneStream = stream;
    room.startMedia({ role, stream, onTrack });
  });
  return starting;
}

function onTrack(track, slot) {
  if (track.kind === "audio") return room.voice(track, slot);
  video.srcObject = new MediaStream([track]);
  picture.restart();
}

// Why there is no (new) picture, in the words of someone waiting for one.
function whyNoPicture(never) {
  if (room.refusal?.ended) return room.refusal.text;
  if (!room.live.connected) return "the connection to probelink was lost: reconnecting…";
  const bedside = room.participants.some((p) => p.role === "operator");
  if (!bedside) return never ? "the bedside has not joined yet" : "the bedside disconnected: waiting for it to rejoin…";
  const media = room.pc?.connectionState;
  if (media !== "connected") return "reconnecting the video…";
  // Video arrives but too much of it is lost on the way to this screen: this expert's network.
  const loss = room.lastQuality?.loss ?? 0;
  if (loss > 5) return `your network is losing ${Math.round(loss)} % of the video: the picture cannot keep up`;
  return never ? "the bedside has not gone live yet" : "no video is arriving from the bedside: waiting for it…";
}

// The picture's state on screen: waiting, frozen (over the last picture), below the floor.
function showPicture(p = picture.state) {
  $("waiting").classList.toggle("hidden", p.state !== "waiting");
  $("waiting").textContent = room.refusal?.ended ? room.refusal.text : `Waiting for the bedside video: ${whyNoPicture(true)}`;
  $("frozen").classList.toggle("hidden", p.state !== "frozen");
  $("frozen-why").textContent = whyNoPicture(false);
  $("quality-banner").classList.toggle("hidden", p.state !== "below");
  if (p.state === "below") {
    const size = `${p.width}×${p.height}`;
    const source = p.width < p.source.width ? ` of ${p.source.width}×${p.source.height}` : "";
    $("quality-banner").textContent = `Below diagnostic quality (${Math.round(p.fps)} fps, ${size}${source})`;
  }
  room.indicate();
}

room.on("state", (state, first) => {
  $("question").textContent = state.consultation.clinical_question;
  picture.setFloor(state.quality);
  if (!first) {
    // A report that could not be loaded (the server was restarting) is loaded on rejoining.
    if (report && !report.view) report.load();
    return;
  }
  role = state.you.role;
  $("role-title").textContent = role === "observer" ? "Observer" : "Expert";
  showRequest(token, state.consultation.id, $("request"));
  report = new ReportForm(token, state.consultation, { readOnly: role !== "expert" });
  for (const k of room.gallery.keys()) report.addKeyImage({ id: k, kind: "key image" });
  report.load();
  if (role !== "expert") {
    for (const id of ["tools", "guidance"]) $(id).classList.add("hidden");
    $("capture-still").closest(".toolbar").classList.add("hidden");
  }
  startMedia();
});
room.on("stats", showStats);
// Let go by the server: the microphone goes off (the room has said why).
room.on("ended", () => {
  for (const track of microphoneStream?.getTracks() || []) track.stop();
  microphoneStream = null;
  showPicture();
});
// Presence and the connections change the reason given for a missing picture; a bedside that
// (re)joins may bring another source.
let bedsidePresent = false;
room.on("people", (list) => {
  const present = list.some((p) => p.role === "operator");
  if (present && !bedsidePresent) picture.newSource();
  bedsidePresent = present;
  showPicture();
});
room.on("media", () => showPicture());
room.live.on("publishing", () => picture.newSource());
const viewer = new Viewer(token, claims(token)?.consultation, (message) => room.alert(message));
// A review without a live picture opens on the first key image, unless the bedside's picture
// arrives within a few seconds of joining (past key images come before it does).
const REVIEW_WAIT_MS = 3000;
let reviewOpened = false;
room.on("keyImage", (k) => {
  report?.addKeyImage(k);
  if (reviewOpened) return;
  reviewOpened = true;
  setTimeout(() => {
    if (!video.videoWidth && !viewer.image) viewer.open(k); // no picture has been shown
  }, REVIEW_WAIT_MS);
});
room.on("openKeyImage", (k) => viewer.open(k));

for (const b of $("tools").querySelectorAll("[data-tool]")) b.addEventListener("click", () => selectTool(b.dataset.tool));
$("clear-marks").addEventListener("click", () => call("mark_clear", {}));
$("cue").addEventListener("change", fillDirections);
$("send-guidance").addEventListener("click", () => guide($("cue").value));
$("hold").addEventListener("click", () => guide("hold"));
for (const [kind, id] of Object.entries(CAPTURE_BUTTONS)) $(id).addEventListener("click", () => captures.act(kind));
$("mic").addEventListener("change", startMedia);
const stage = $("stage");
stage.addEventListener("pointerdown", pointerDown);
stage.addEventListener("pointermove", pointerMove);
stage.addEventListener("pointerup", pointerUp);
stage.addEventListener("pointercancel", () => { drawing = null; overlay.setDraft(null); });
stage.addEventListener("keydown", (event) => {
  if (stageKey(event)) event.stopPropagation();
});
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (role !== "expert") return;
  const key = event.key.toLowerCase();
  // A held key is one press: no capture, guidance or clear per key repeat.
  if (event.repeat && (TOOL_KEYS[key] || ACTION_KEYS.has(key))) return event.preventDefault();
  if (TOOL_KEYS[key]) selectTool(TOOL_KEYS[key]);
  else if (key === "x") call("mark_clear", {});
  else if (key === "g") guide($("cue").value);
  else if (key === "h") guide("hold");
  else if (key === "s") captures.act("still");
  else if (key === "k") captures.act("clip");
  else if (key === "r") captures.act("record");
  else if (key === "escape" && drawing) { drawing = null; overlay.setDraft(null); overlay.removePointer("keyboard"); }
  else return;
  event.preventDefault();
});

selectTool("pointer");
trackFrames();
try {
  directions = (await api(token, "/api/vocabulary")).guidance;
} catch (error) {
  fail(error);
}
fillDirections();
