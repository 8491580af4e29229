// Bedside page: pick the scanner's video (capture card, camera, or the demo phantom), publish
// it with the operator's voice, see the expert's pointer, marks and guidance over it, hear the
// expert, and capture. A still is the page's own full-resolution frame, lossless (PNG upload).
import { describe, el, pageToken } from "./lib/api.js";
import { Overlay } from "./lib/overlay.js";
import { phantomStream } from "./lib/phantom.js";
import { Room } from "./lib/room.js";

const PHANTOM = "phantom";
const $ = (id) => document.getElementById(id);
const token = pageToken();
const video = $("video");
const overlay = new Overlay($("overlay"), video);
const room = new Room(token, overlay, {
  status: $("connection"), participants: $("participants"), gallery: $("gallery"), log: $("log"),
  guidance: $("guidance-text"), marks: $("marks-text"),
});
let stream = null, phantom = null, live = false, recording = false;

function fail(error) {
  $("error").textContent = describe(error);
  room.say(describe(error), true);
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
  const wanted = new URLSearchParams(location.search).get("source");
  $("source").value = wanted === PHANTOM || !cameras.length ? PHANTOM : chosen || cameras[0].deviceId;
}

async function openSource() {
  const source = $("source").value;
  stream?.getTracks().forEach((t) => t.stop());
  phantom?.stop();
  phantom = null;
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

async function preview() {
  try {
    $("error").textContent = "";
    await openSource();
    if (live) room.startMedia(mediaOf());
  } catch (error) {
    fail(error);
  }
}

function mediaOf() {
  return {
    role: "operator",
    stream,
    onTrack: (track) => {
      if (track.kind !== "audio") return;
      const audio = el("audio", { autoplay: true });
      audio.srcObject = new MediaStream([track]);
      $("voices").append(audio);
    },
  };
}

function goLive() {
  if (!stream) return;
  live = true;
  room.startMedia(mediaOf());
  $("go-live").disabled = true;
  $("go-live").textContent = "Live";
  for (const id of ["capture-still", "capture-clip", "record"]) $(id).disabled = false;
}

// The still the bedside sees, at the source's full size, without lossy coding.
async function captureStill() {
  if (!video.videoWidth) return;
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const cid = room.state.consultation.id;
  const response = await fetch(`/api/consultations/${cid}/captures`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "image/png" },
    body: png,
  });
  const answer = await response.json();
  if (!response.ok) throw Object.assign(new Error(answer.error?.message), answer.error);
  room.say(`Still captured (${video.videoWidth}×${video.videoHeight}, lossless)`);
}

async function act(what) {
  try {
    $("error").textContent = "";
    if (what === "still") await captureStill();
    if (what === "clip") {
      const seconds = Number($("clip-seconds").value) || 6;
      await room.live.call("capture", { kind: "clip", seconds }, 60000);
      room.say(`Last ${seconds} s saved`);
    }
    if (what === "record") {
      recording = !recording;
      $("record").setAttribute("aria-pressed", String(recording));
      $("record").textContent = recording ? "Stop recording" : "Record clip";
      await room.live.call("capture", { kind: "clip", record: recording ? "start" : "stop" }, 60000);
      room.say(recording ? "Recording…" : "Recording saved");
    }
  } catch (error) {
    if (what === "record" && recording) {
      recording = false;
      $("record").setAttribute("aria-pressed", "false");
      $("record").textContent = "Record clip";
    }
    fail(error);
  }
}

room.on("state", (state) => {
  $("question").textContent = state.consultation.clinical_question;
});
$("source").addEventListener("change", preview);
$("mic").addEventListener("change", preview);
$("go-live").addEventListener("click", goLive);
$("capture-still").addEventListener("click", () => act("still"));
$("capture-clip").addEventListener("click", () => act("clip"));
$("record").addEventListener("click", () => act("record"));
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "g") goLive();
  else if (key === "s" && live) act("still");
  else if (key === "k" && live) act("clip");
  else if (key === "r" && live) act("record");
  else return;
  event.preventDefault();
});
navigator.mediaDevices?.addEventListener?.("devicechange", listSources);

if (!token) {
  $("error").textContent = "This page needs the join link you were sent.";
} else {
  await listSources();
  await preview();
  // Device labels appear only after permission: list again now that it is granted.
  if ($("source").value !== PHANTOM) await listSources();
  if (new URLSearchParams(location.search).has("live")) goLive();
}
