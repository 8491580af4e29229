// The viewer: a stored key image at full size, with cine playback at the recorded frame rate
// (play, pause, frame step) and calipers in millimetres.
//
// Millimetres come from the image's calibration: a scanner's ultrasound region (its physical
// size of a pixel, set by the scanner), or a two-point calibration the expert makes on the
// on-screen depth scale (two points, then the distance between them in mm), shown as such. A
// caliper outside the scanner's region, or on an image that has neither, is labelled
// uncalibrated and given as a fraction of the picture's width.
import { api, ApiError, capturedAt, describe } from "./api.js";
import { $, el } from "./dom.js";

const COLOR = "#ffd400";

// Millimetres per pixel (both ways) from two points of the depth scale and their distance.
function scaleOf(depth) {
  const [a, b] = depth.points;
  const mm = depth.mm / Math.hypot(b[0] - a[0], b[1] - a[1]);
  return [mm, mm];
}

export class Viewer {
  constructor(token, consultation, fail) {
    this.token = token;
    this.consultation = consultation;
    this.fail = fail;
    this.canvas = $("viewer-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.frames = [];
    this.playing = false;
    this.index = 0;
    $("viewer-play").addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    $("viewer-prev").addEventListener("click", () => this.step(-1));
    $("viewer-next").addEventListener("click", () => this.step(1));
    $("viewer-close").addEventListener("click", () => this.close());
    $("viewer-calibrate").addEventListener("click", () => this.startCalibration());
    $("viewer-calibrate-set").addEventListener("click", () => this.finishCalibration());
    $("viewer-save").addEventListener("click", () => this.save());
    $("viewer-clear").addEventListener("click", () => {
      this.calipers = [];
      this.readout();
      this.draw();
    });
    this.canvas.addEventListener("click", (event) => this.click(event));
    $("viewer-compare-select").addEventListener("change", () => this.compare($("viewer-compare-select").value));
  }

  // k: a key image as the room announced it (id, kind) or as listed (with detail).
  async open(k) {
    this.pause();
    // The image opened last is the one shown, whichever arrives first.
    const ticket = (this.ticket = (this.ticket || 0) + 1);
    try {
      const listed = await api(this.token, `/api/consultations/${this.consultation}/key-images`);
      const { frames, fps } = await this.fetchFrames(`/api/key-images/${k.id}/frames`);
      if (ticket !== this.ticket) return;
      this.image = (listed.key_images || []).find((i) => i.id === k.id) || k;
      this.frames = frames;
      this.fps = fps || this.image.detail?.fps || 30;
      this.offerComparisons(listed.key_images || [], listed.priors || []);
    } catch (error) {
      this.fail(`The key image cannot be shown: ${describe(error)}`);
      return;
    }
    const detail = this.image.detail || {};
    this.calibration = detail.calibration
      ? { mmPerPixel: detail.calibration.mm_per_pixel, region: detail.calibration.region, label: "from the scanner's ultrasound region" }
      : null;
    // The picture's size, before anything is drawn or shown (the calibration on screen at a
    // capture is in fractions of it).
    const first = await createImageBitmap(this.frames[0]);
    const [width, height] = [first.width, first.height];
    first.close();
    if (ticket !== this.ticket) return;
    this.pending = null;
    this.calibrating = null;
    // What was saved before: its calipers, and a depth-scale calibration; else the live room's
    // calibration that was on screen when it was captured (normalized points).
    const saved = this.image.measurements;
    this.calipers = (saved?.calipers || []).map((c) => ({ a: c.points[0], b: c.points[1], frame: c.frame, saved: c }));
    const onScreen = (this.image.marks || []).filter((m) => m.kind === "calibration" && m.mm > 0).pop();
    this.depth = saved?.calibration
      || (onScreen ? { points: onScreen.points.map(([x, y]) => [x * width, y * height]), mm: onScreen.mm } : null);
    this.depthScale = this.depth ? scaleOf(this.depth) : null;
    $("viewer-saved").textContent = saved ? `Saved (${saved.calipers.length} calipers)` : "";
    this.readout();
    this.sayCalibration();
    $("viewer-calibrate-form").classList.add("hidden");
    $("viewer-play").disabled = $("viewer-prev").disabled = $("viewer-next").disabled = this.frames.length < 2;
    // What it is and when it was captured, as the gallery says it.
    const source = detail.source === "scanner" ? "Scanner " : "";
    const when = this.image.created_at ? ` · captured ${capturedAt(this.image.created_at)}` : "";
    $("viewer-title").textContent = `${source}${source ? this.image.kind : this.image.kind[0].toUpperCase() + this.image.kind.slice(1)}${when}`;
    $("viewer").classList.remove("hidden");
    $("viewer").scrollIntoView({ block: "start" });
    // Last: the frame counter it sets says the viewer is ready.
    await this.show(0);
  }

  // Every frame of an image, at full size, in one response (the server's /frames).
  async fetchFrames(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" });
    if (!response.ok) throw new ApiError(response.status, (await response.json().catch(() => ({}))).error);
    const type = response.headers.get("X-Frame-Type");
    const lengths = response.headers.get("X-Frame-Lengths").split(",").map(Number);
    const body = await response.arrayBuffer();
    let at = 0;
    return { frames: lengths.map((length) => new Blob([body.slice(at, (at += length))], { type })), fps: Number(response.headers.get("X-Frame-Rate")) };
  }

  // The other key images and the priors, to show beside this one.
  offerComparisons(images, priors) {
    const options = [
      ...priors.map((p, n) => el("option", { value: `/api/priors/${p.sop_instance_uid}/frames`, text: `Prior ${n + 1}` })),
      ...images.filter((i) => i.id !== this.image.id).map((i, n) => el("option", { value: `/api/key-images/${i.id}/frames`, text: `${i.detail?.source === "scanner" ? "scanner " : ""}${i.kind} ${n + 1}` })),
    ];
    $("viewer-compare-select").replaceChildren(el("option", { value: "", text: "—" }), ...options);
    this.compare("");
  }

  async compare(path) {
    $("viewer-panes").classList.toggle("comparing", !!path);
    $("viewer-compare").classList.toggle("hidden", !path);
    if (!path) return;
    try {
      const { frames } = await this.fetchFrames(path);
      const bitmap = await createImageBitmap(frames[0]);
      const canvas = $("viewer-compare-canvas");
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      const chosen = $("viewer-compare-select").selectedOptions[0]?.textContent || "";
      $("viewer-compare-caption").textContent = `${chosen}${frames.length > 1 ? ` (first of ${frames.length} frames)` : ""}`;
    } catch (error) {
      this.fail(`The image to compare with cannot be shown: ${describe(error)}`);
    }
  }

  close() {
    this.pause();
    this.frames = [];
    $("viewer").classList.add("hidden");
  }

  async show(index) {
    this.index = (index + this.frames.length) % this.frames.length;
    const bitmap = await createImageBitmap(this.frames[this.index]);
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
    }
    this.bitmap?.close(); // a decoded 720p frame is 3.7 MB: one at a time
    this.bitmap = bitmap;
    this.draw();
    $("viewer-counter").textContent = `Frame ${this.index + 1} / ${this.frames.length}`;
  }

  draw() {
    if (!this.bitmap) return;
    const ctx = this.ctx;
    ctx.drawImage(this.bitmap, 0, 0);
    ctx.strokeStyle = ctx.fillStyle = COLOR;
    ctx.lineWidth = Math.max(2, this.canvas.width / 640);
    ctx.font = `${Math.round(this.canvas.width / 50)}px sans-serif`;
    for (const [n, c] of this.calipers.entries()) {
      if (c.frame && c.frame !== this.index + 1) continue;
      ctx.beginPath();
      ctx.moveTo(...c.a);
      ctx.lineTo(...c.b);
      ctx.stroke();
      ctx.fillText(`${n + 1}`, c.b[0] + 6, c.b[1] - 6);
    }
    for (const p of [this.pending, ...(this.calibrating || [])].filter(Boolean)) {
      ctx.beginPath();
      ctx.arc(p[0], p[1], ctx.lineWidth * 2, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  // Playback at the recorded rate: the frame shown is the one the clock is at (frames the
  // browser could not decode in time are skipped, not slowed down).
  play() {
    if (this.frames.length < 2 || this.playing) return;
    this.playing = true;
    const loop = (this.loop = (this.loop || 0) + 1); // a pause and play again: one loop only
    $("viewer-play").textContent = "Pause";
    const start = performance.now() - (this.index * 1000) / this.fps;
    const tick = async () => {
      if (!this.playing || loop !== this.loop) return;
      const due = Math.floor(((performance.now() - start) * this.fps) / 1000) % this.frames.length;
      if (due !== this.index) await this.show(due);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  pause() {
    this.playing = false;
    $("viewer-play").textContent = "Play";
  }

  step(by) {
    this.pause();
    if (this.frames.length) this.show(this.index + by);
  }

  // A point on the picture, in its own pixels.
  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [((event.clientX - box.left) * this.canvas.width) / box.width, ((event.clientY - box.top) * this.canvas.height) / box.height];
  }

  click(event) {
    const p = this.point(event);
    if (this.calibrating) {
      this.calibrating.push(p);
      if (this.calibrating.length === 2) {
        $("viewer-calibrate-form").classList.remove("hidden");
        $("viewer-mm").focus();
      }
    } else if (!this.pending) {
      this.pending = p;
    } else {
      // On a clip, a caliper belongs to the frame it was drawn on.
      this.calipers.push({ a: this.pending, b: p, frame: this.frames.length > 1 ? this.index + 1 : null });
      this.pending = null;
      this.readout();
    }
    this.draw();
  }

  sayCalibration() {
    const said = [this.calibration && `Calibrated ${this.calibration.label}`, this.depthScale && `${this.calibration ? "elsewhere, c" : "C"}alibrated on the depth scale`];
    $("viewer-calibration").textContent = said.filter(Boolean).join("; ") || "Not calibrated: measurements are fractions of the width";
  }

  startCalibration() {
    this.calibrating = [];
    this.pending = null;
    $("viewer-calibration").textContent = "Calibrating: click two marks of the depth scale, then give the distance between them";
  }

  finishCalibration() {
    const mm = Number($("viewer-mm").value);
    const [a, b] = this.calibrating || [];
    if (!a || !b || !(mm > 0) || Math.hypot(b[0] - a[0], b[1] - a[1]) < 1) {
      this.fail("Calibration needs two points apart on the depth scale and their distance in mm.");
      return;
    }
    this.depth = { points: [a, b], mm };
    this.depthScale = scaleOf(this.depth);
    this.calibrating = null;
    $("viewer-calibrate-form").classList.add("hidden");
    this.sayCalibration();
    this.readout();
    this.draw();
  }

  // A caliper's length: the server's, once saved; otherwise in mm when calibrated and inside
  // the calibrated region (the server's rule: the region, else the depth scale).
  length(c) {
    if (c.saved) return { mm: c.saved.mm, text: c.saved.mm != null ? `${c.saved.mm.toFixed(1)} mm (${c.saved.said})` : `${this.share(c)} of the width (uncalibrated)` };
    const cal = this.calibration;
    const inside = (p) => !cal?.region || (p[0] >= cal.region[0] && p[0] <= cal.region[2] && p[1] >= cal.region[1] && p[1] <= cal.region[3]);
    const measure = (scale, label) => {
      const mm = Math.hypot((c.b[0] - c.a[0]) * scale[0], (c.b[1] - c.a[1]) * scale[1]);
      return { mm, text: `${mm.toFixed(1)} mm (calibrated ${label})` };
    };
    if (cal && inside(c.a) && inside(c.b)) return measure(cal.mmPerPixel, cal.label);
    if (this.depthScale) return measure(this.depthScale, "on the depth scale");
    return { mm: null, text: `${this.share(c)} of the width (uncalibrated${cal ? ": outside the calibrated region" : ""})` };
  }

  share(c) {
    return (Math.hypot(c.b[0] - c.a[0], c.b[1] - c.a[1]) / this.canvas.width).toFixed(3);
  }

  // The calipers and calibration kept with the image (a presentation state draws them); the
  // lengths shown then are the server's own.
  async save() {
    try {
      const body = { calipers: this.calipers.map((c) => ({ points: [c.a, c.b], frame: c.frame || null })), calibration: this.depth || null };
      const saved = await api(this.token, `/api/key-images/${this.image.id}/measurements`, { method: "PUT", json: body });
      this.calipers = saved.calipers.map((c) => ({ a: c.points[0], b: c.points[1], frame: c.frame, saved: c }));
      this.image.measurements = saved;
      $("viewer-saved").textContent = `Saved (${saved.calipers.length} calipers)`;
      this.readout();
    } catch (error) {
      this.fail(`Measurements not saved: ${describe(error)}`);
    }
  }

  readout() {
    $("viewer-readout").replaceChildren(...this.calipers.map((c, n) => el("li", { "data-mm": this.length(c).mm ?? "", text: `${n + 1}: ${this.length(c).text}${c.frame ? ` (frame ${c.frame})` : ""}` })));
  }
}
