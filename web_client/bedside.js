// Bedside page: pick the scanner's video (capture card, camera, or the demo phantom), publish
// it with the operator's voice, see the expert's pointer, marks and guidance over it, hear the
// expert, and capture. A still is the page's own full-resolution frame, lossless (PNG upload).
import { api, claims, describe } from "./lib/api.js";
import { admit } from "./lib/gate.js";
import { CAPTURE_BUTTONS, Captures } from "./lib/captures.js";
import { $, el } from "./lib/dom.js";
import { Overlay } from "./lib/overlay.js";
import { phantomStream } from "./lib/phantom.js";
import { Uploads } from "./lib/uploads.js";
import { Room } from "./lib/room.js";

const PHANTOM = "phantom";
// Nothing of the page runs before its link is accepted (lib/gate.js).
const { token } = await admit("bedside");
const video = $("video");
const overlay = new Overlay($("overlay"), video);
const room = new Room(token, overlay);
const captures = new Captures(room, { still: captureStill, fail });
let stream = null, phantom = null, live = false;
// The chosen source stopped: nothing is selected until the operator picks one, so that picking
// it again (or the phantom) is a change that opens it.
let sourceLost = false;
// Live in this tab, from which source, with or without the microphone: a reload (or a crash of
// the page) goes live again by itself with the same source, for the same consultation, and only
// with that source. Session storage ends with the tab; it holds a device id, nothing else.
const LIVE_KEY = `probelink.live.${claims(token)?.consultation || ""}`;

function remembered() {
  try {
    return JSON.parse(sessionStorage.getItem(LIVE_KEY));
  } catch {
    return null;
  }
}

function remember() {
  if (live) sessionStorage.setItem(LIVE_KEY, JSON.stringify({ source: $("source").value, mic: $("mic").checked }));
}

// Whether the source open now is the one this tab was live with.
function sameSource(wanted) {
  if (wanted === PHANTOM) return !!phantom;
  return !phantom && stream?.getVideoTracks()[0]?.getSettings().deviceId === wanted;
}

// What the browser's media errors mean for someone at the bedside.
const MEDIA_ERRORS = {
  NotAllowedError: "The browser was refused the camera: allow it in the site settings (the icon beside the address), then choose the source again.",
  NotFoundError: "No camera or capture card found: plug one in, or choose the demo phantom.",
  OverconstrainedError: "That camera is no longer there: choose the source again.",
  NotReadableError: "The camera is in use by another program (or failed): close it there, then choose the source again.",
};

function fail(error) {
  room.alert(MEDIA_ERRORS[error?.name] || describe(error));
}

async function listSources() {
  let cameras = [];
  try {
    cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  } catch {
    // no media devices at all: the phantom remains
  }
  const chosen = $("source").value;
  $("source").replaceChildren(
    ...cameras.map((c, i) => el("option", { value: c.deviceId, text: c.label || `Camera ${i + 1}` })),
    el("option", { value: PHANTOM, text: "Demo: synthetic phantom" }),
  );
  const present = [...$("source").options].some((o) => o.value === chosen);
  if (sourceLost || (chosen && !present)) {
    sourceLost = true;
    $("source").selectedIndex = -1;
  } else if (chosen) {
    $("source").value = chosen;
  } else {
    // After a reload, the source this tab was live with, if it is still there.
    const wanted = remembered()?.source ?? new URLSearchParams(location.search).get("source");
    const there = [...$("source").options].some((o) => o.value === wanted);
    $("source").value = there ? wanted : wanted === PHANTOM || !cameras.length ? PHANTOM : cameras[0].deviceId;
  }
}

// A camera unplugged (or a capture card losing its signal) ends its track: the picture would
// freeze on both pages with nothing said.
function cameraEnded() {
  fail(new Error("The video source stopped (unplugged?): reconnect it and choose it again, or choose the demo phantom."));
  sourceLost = true;
  listSources();
}

function closeSource() {
  for (const t of stream?.getTracks() || []) {
    t.removeEventListener("ended", cameraEnded); // stopped on purpose
    t.stop();
  }
  stream = null;
  phantom?.stop();
  phantom = null;
}

async function openSource() {
  if (sourceLost) throw new Error("Choose the video source again.");
  const source = $("source").value;
  closeSource();
  let videoTrack;
  if (source === PHANTOM) {
    phantom = phantomStream();
    videoTrack = phantom.stream.getVideoTracks()[0];
  } else {
    const camera = await navigator.mediaDevices.getUserMedia({
      // Before permission is granted a camera has no id yet: take the default one.
      video: { ...(source ? { deviceId: { exact: source } } : {}), width: { ideal: 1280 }, height: { ideal: 720 } },
    });
    videoTrack = camera.getVideoTracks()[0];
    videoTrack.addEventListener("ended", cameraEnded);
  }
  const tracks = [videoTrack];
  if ($("mic").checked) {
    try {
      tracks.push(...(await navigator.mediaDevices.getUserMedia({ audio: true })).getAudioTracks());
    } catch (error) {
      room.say(`No microphone: ${describe(error)}`, true);
    }
  }
  stream = new MediaStream(tracks);
  video.srcObject = stream;
  $("demo-badge").classList.toggle("hidden", source !== PHANTOM);
}

// One source change at a time: two overlapping ones would leave a camera (or the phantom's
// timer) running that nothing holds any more.
let opening = Promise.resolve();
function preview() {
  opening = opening.then(async () => {
    try {
      room.clearError();
      await openSource();
      remember();
      if (live) room.startMedia(mediaOf());
    } catch (error) {
      fail(error);
    }
  });
  return opening;
}

function mediaOf() {
  return {
    role: "operator",
    stream,
    onTrack: (track, slot) => {
      if (track.kind === "audio") room.voice(track, slot);
    },
  };
}

function goLive() {
  if (live) return;
  if (!stream) {
    fail(new Error("No video to send: choose a video source first (the demo phantom always works)."));
    return;
  }
  live = true;
  remember();
  room.startMedia(mediaOf());
  $("go-live").disabled = true;
  $("go-live").textContent = "Live";
  for (const id of Object.values(CAPTURE_BUTTONS)) $(id).disabled = false;
}

// The still the bedside sees, at the source's full size, without lossy coding.
async function captureStill() {
  if (!video.videoWidth) throw new Error("No picture to capture yet.");
  if (!room.state) throw new Error("Not in the room yet: wait for the connection.");
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const cid = room.state.consultation.id;
  // Through api(): a refusal, a proxy's page or no network all become a readable message.
  await api(token, `/api/consultations/${cid}/captures`, { method: "POST", body: png, contentType: "image/png" });
  room.say(`Still captured (${canvas.width}×${canvas.height}, lossless)`);
}

room.on("state", (state) => {
  $("question").textContent = state.consultation.clinical_question;
  $("accession").textContent = state.consultation.accession_number ? `Accession ${state.consultation.accession_number}` : "";
});
new Uploads(token, claims(token)?.consultation, { zone: $("upload-zone"), input: $("upload-input"), list: $("uploads") },
  (file) => room.say(`${file.name} stored`));
// Signed or cancelled: the camera and microphone go off, and a reload does not go live again.
room.on("ended", () => {
  live = false;
  sessionStorage.removeItem(LIVE_KEY);
  closeSource();
  video.srcObject = null;
  for (const id of ["source", "mic", "go-live", ...Object.values(CAPTURE_BUTTONS)]) $(id).disabled = true;
});
$("source").addEventListener("change", () => {
  sourceLost = false;
  preview();
});
$("mic").addEventListener("change", preview);
$("go-live").addEventListener("click", goLive);
for (const [kind, id] of Object.entries(CAPTURE_BUTTONS)) $(id).addEventListener("click", () => captures.act(kind));
const SHORTCUTS = { g: goLive, s: () => captures.act("still"), k: () => captures.act("clip"), r: () => captures.act("record") };
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (!SHORTCUTS[key] || (key !== "g" && !live)) return;
  event.preventDefault();
  // A held key is one press, not a capture per repeat.
  if (!event.repeat) SHORTCUTS[key]();
});
navigator.mediaDevices?.addEventListener?.("devicechange", listSources);

const before = remembered();
if (before) $("mic").checked = before.mic !== false;
await listSources();
await preview();
// Device labels appear only after permission: list again now that it is granted.
if ($("source").value !== PHANTOM) await listSources();
if (before && sameSource(before.source)) {
  goLive();
  room.say("Live again with the same source (the page was reloaded)");
} else if (before) {
  room.alert("The video source this page was live with is not available: choose the source, then go live again.");
} else if (new URLSearchParams(location.search).has("live")) goLive();
