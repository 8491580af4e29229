// The upload panel: files dropped or chosen (a scanner's DICOM, a clip recorded on a phone or
// exported from the scanner, a still), sent one after the other to the consultation's
// captures, each with its own progress and its own outcome (stored, or the server's refusal in
// words). Nothing is read here: the server de-identifies and masks every file before storing.
import { describe, ApiError } from "./api.js";
import { el } from "./dom.js";

// What the server takes, by type; a DICOM file often has no type at all, so it is recognized
// by its extension or by the "DICM" the Part 10 format puts after its 128-byte preamble.
const TYPES = { "video/mp4": "video/mp4", "video/webm": "video/webm", "image/png": "image/png", "application/dicom": "application/dicom" };
const EXTENSIONS = { mp4: "video/mp4", m4v: "video/mp4", mov: "video/mp4", webm: "video/webm", png: "image/png", dcm: "application/dicom", dicom: "application/dicom" };

async function contentType(file) {
  if (TYPES[file.type]) return TYPES[file.type];
  const extension = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
  if (EXTENSIONS[extension]) return EXTENSIONS[extension];
  const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  if (String.fromCharCode(...head) === "DICM") return "application/dicom";
  return null;
}

// One file's upload with progress (fetch cannot report an upload's progress; XHR can).
function send(token, url, file, type, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Content-Type", type);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // not our answer (a proxy's page): keep the status
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { code: "network", message: "the server cannot be reached" })));
    xhr.send(file);
  });
}

export class Uploads {
  // token: the page's; consultation: its id; ui: {zone, input, list} elements; onStored(file).
  constructor(token, consultation, { zone, input, list }, onStored = () => {}) {
    this.url = `/api/consultations/${consultation}/captures`;
    this.token = token;
    this.list = list;
    this.onStored = onStored;
    this.queue = Promise.resolve();
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.add([...event.dataTransfer.files]);
    });
  }

  add(files) {
    for (const file of files) {
      const bar = el("progress", { max: "1", value: "0", "aria-label": `Upload of ${file.name}` });
      const status = el("span", { class: "muted", text: "waiting" });
      const item = el("li", { "data-upload": file.name }, el("span", { class: "name", text: file.name }), bar, status);
      this.list.append(item);
      // One at a time: a clip takes the server a few seconds and the uplink all it has.
      this.queue = this.queue.then(() => this.one(file, bar, status, item));
    }
  }

  async one(file, bar, status, item) {
    let type = null;
    try {
      type = await contentType(file);
    } catch {
      // unreadable (a folder dropped, a file gone): refused below, and the queue goes on
    }
    if (!type) {
      this.done(item, status, "refused", "not a DICOM file, MP4 or WebM clip, or PNG still");
      return;
    }
    status.textContent = "sending";
    try {
      await send(this.token, this.url, file, type, (share) => {
        bar.value = share;
        if (share >= 1) status.textContent = "de-identifying";
      });
      bar.value = 1;
      this.done(item, status, "stored", "stored, de-identified");
      this.onStored(file);
    } catch (error) {
      this.done(item, status, "refused", describe(error));
    }
  }

  done(item, status, outcome, text) {
    item.dataset.outcome = outcome;
    status.textContent = text;
    status.className = outcome === "refused" ? "error" : "muted";
  }
}
