/**
 * Video overlay for probelink: draws relayed marks, remote pointers, the current guidance cue
 * and a local draft mark on a <canvas> laid exactly over a <video> shown with
 * `object-fit: contain`. Inputs use normalized [0, 1] frame coordinates (docs/protocol.md,
 * "Socket.IO"), so everything is mapped onto the letterboxed picture, never the element box.
 */

const ROLE_COLOR = { expert: "#ffd400", operator: "#00e5ff" };
const DRAFT_COLOR = "#ffffff", POINTER_COLOR = "#b6ff00", OUTLINE = "rgba(0, 0, 0, 0.85)";
const LINE = 3, POINTER_TTL_MS = 3000, POINTER_FADE_MS = 500, GUIDANCE_TTL_MS = 8000;
const clock = () => performance.now();

// Screen directions get a real arrow; anatomical ones (cranial, medial, ...) depend on how the
// probe is held, so they get the cue's own symbol and the word rather than a guessed arrow.
const SCREEN_ARROW = { left: "←", right: "→", up: "↑", down: "↓" };
const DIRECTION_SYMBOL = {
  clockwise: "↻", counterclockwise: "↺", toward_marker: "↶", away_from_marker: "↷",
  more: "⇊", less: "⇈", release: "⇈",
};
const CUE_SYMBOL = {
  slide: "⇆", fan: "∢", tilt: "∠", rotate: "↻", rock: "↷", compress: "⇊", hold: "■",
};

export function contentRect(video) {
  const w = video.clientWidth, h = video.clientHeight;
  const vw = video.videoWidth, vh = video.videoHeight;
  if (!vw || !vh || !w || !h) return { x: 0, y: 0, width: w, height: h };
  const scale = Math.min(w / vw, h / vh);
  const width = vw * scale, height = vh * scale;
  return { x: (w - width) / 2, y: (h - height) / 2, width, height };
}

export function toNormalized(video, clientX, clientY) {
  const box = video.getBoundingClientRect();
  const r = contentRect(video);
  if (!r.width || !r.height) return null;
  // clientLeft/Top skip a border: getBoundingClientRect includes it, the picture does not.
  const x = (clientX - box.left - video.clientLeft - r.x) / r.width;
  const y = (clientY - box.top - video.clientTop - r.y) / r.height;
  // A hair of tolerance so the picture's exact edge (float rounding) still counts as inside.
  const eps = 1e-6, clamp = (v) => Math.min(1, Math.max(0, v));
  return x < -eps || x > 1 + eps || y < -eps || y > 1 + eps ? null : { x: clamp(x), y: clamp(y) };
}

export class Overlay {
  constructor(canvas, video) {
    this.canvas = canvas;
    this.video = video;
    this.ctx = canvas.getContext("2d");
    this._marks = new Map();
    this._pointers = new Map();
    this._guidance = this._draft = null;
    this._frame = this._timer = 0;
    this._destroyed = false;
    this._redraw = () => this._schedule();
    this._resize = new ResizeObserver(this._redraw);
    this._resize.observe(video);
    this._resize.observe(canvas);
    // The picture's aspect is only known once metadata arrives, and may change mid-stream.
    video.addEventListener("loadedmetadata", this._redraw);
    video.addEventListener("resize", this._redraw);
    this._schedule();
  }

  setMarks(marks) { this._marks = new Map((marks || []).map((m) => [m.id, m])); this._schedule(); }
  addMark(mark) { this._marks.set(mark.id, mark); this._schedule(); }
  removeMarks(ids) { for (const id of ids) this._marks.delete(id); this._schedule(); }
  clearMarks() { this._marks.clear(); this._schedule(); }
  setPointer(from, x, y) { this._pointers.set(from, { x, y, at: clock() }); this._schedule(); }
  removePointer(from) { this._pointers.delete(from); this._schedule(); }
  setGuidance(g) { this._guidance = g ? { g, at: clock() } : null; this._schedule(); }
  setDraft(mark) { this._draft = mark || null; this._schedule(); }

  get state() {
    this._expire(clock());
    const guidance = this._guidance ? this._guidance.g : null;
    return { marks: [...this._marks.keys()], pointers: [...this._pointers.keys()], guidance };
  }

  draw() {
    if (this._destroyed) return;
    const now = clock();
    this._expire(now);
    const { canvas, ctx } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const bw = Math.round(w * dpr), bh = Math.round(h * dpr);
    if (canvas.width !== bw || canvas.height !== bh) { canvas.width = bw; canvas.height = bh; }
    // Draw in CSS pixels on a device-pixel backing store, so lines stay crisp on HiDPI screens.
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const r = contentRect(this.video);
    const scale = depthScale(this._marks.values(), r);
    for (const m of this._marks.values()) drawMark(ctx, r, m, false, scale);
    if (this._draft) drawMark(ctx, r, this._draft, true, scale);
    for (const p of this._pointers.values()) drawPointer(ctx, r, p, now);
    if (this._guidance) drawGuidance(ctx, r, this._guidance.g);
    this._planNext(now);
  }

  destroy() {
    this._destroyed = true;
    this._resize.disconnect();
    this.video.removeEventListener("loadedmetadata", this._redraw);
    this.video.removeEventListener("resize", this._redraw);
    cancelAnimationFrame(this._frame);
    clearTimeout(this._timer);
    this.ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  _schedule() {
    if (this._frame || this._destroyed) return;
    this._frame = requestAnimationFrame(() => { this._frame = 0; this.draw(); });
  }

  _expire(now) {
    for (const [id, p] of this._pointers) {
      if (now - p.at > POINTER_TTL_MS + POINTER_FADE_MS) this._pointers.delete(id);
    }
    if (this._guidance && now - this._guidance.at > GUIDANCE_TTL_MS) this._guidance = null;
  }

  // Sleep until the next pointer starts fading or the guidance expires; animate only the fade.
  _planNext(now) {
    clearTimeout(this._timer);
    let wait = Infinity;
    for (const p of this._pointers.values()) wait = Math.min(wait, p.at + POINTER_TTL_MS - now);
    if (this._guidance) wait = Math.min(wait, this._guidance.at + GUIDANCE_TTL_MS - now);
    if (wait <= 0) this._schedule();
    else if (wait < Infinity) this._timer = setTimeout(this._redraw, wait + 1);
  }
}

// A wide dark stroke under the coloured one keeps lines readable on black and on bright tissue.
function outlined(ctx, color, dashed, trace, width = LINE) {
  ctx.save();
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.setLineDash(dashed ? [8, 6] : []);
  for (const [style, lw] of [[OUTLINE, width + 2], [color, width]]) {
    ctx.beginPath();
    trace();
    Object.assign(ctx, { strokeStyle: style, lineWidth: lw }).stroke();
  }
  ctx.restore();
}

function label(ctx, color, text, x, y, align = "left", size = 16, maxWidth = Infinity) {
  ctx.save();
  ctx.font = `bold ${Math.round(size)}px system-ui, sans-serif`;
  Object.assign(ctx, { textAlign: align, textBaseline: "middle" });
  text = fit(ctx, text, maxWidth);
  // The dark halo keeps text legible over bright speckle.
  Object.assign(ctx, { lineJoin: "round", lineWidth: 4, strokeStyle: OUTLINE, fillStyle: color });
  ctx.strokeText(text, x, y);
  ctx.fillText(text, x, y);
  ctx.restore();
}

function fit(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  while (text && ctx.measureText(text + "…").width > max) text = text.slice(0, -1);
  return text + "…";
}

// Millimetres per screen pixel from the newest calibration on the depth scale, or null.
function depthScale(marks, r) {
  let newest = null;
  for (const m of marks) if (m.kind === "calibration" && m.mm > 0 && (!newest || (m.seq ?? 0) >= (newest.seq ?? 0))) newest = m;
  if (!newest) return null;
  const [[x0, y0], [x1, y1]] = newest.points;
  const pixels = Math.hypot((x1 - x0) * r.width, (y1 - y0) * r.height);
  return pixels > 0 ? newest.mm / pixels : null;
}

function drawMark(ctx, r, mark, dashed, scale = null) {
  const pts = (mark.points || []).map(([x, y]) => [r.x + x * r.width, r.y + y * r.height]);
  const color = ROLE_COLOR[mark.author_role] || DRAFT_COLOR;
  const [a, b] = pts;
  if (!a) return;
  if (mark.kind === "text") {
    if (mark.text) label(ctx, color, mark.text, a[0], a[1]);
  } else if (mark.kind === "freehand" && pts.length >= 2) {
    // lineTo on an empty path starts it, so the first point needs no moveTo.
    outlined(ctx, color, dashed, () => pts.forEach((p) => ctx.lineTo(...p)));
  } else if (!b) {
    return;
  } else if (mark.kind === "arrow") {
    const ang = Math.atan2(b[1] - a[1], b[0] - a[0]);
    outlined(ctx, color, dashed, () => {
      ctx.moveTo(...a);
      ctx.lineTo(...b);
      for (const s of [-0.45, 0.45]) {
        ctx.moveTo(...b);
        ctx.lineTo(b[0] - 16 * Math.cos(ang + s), b[1] - 16 * Math.sin(ang + s));
      }
    });
  } else if (mark.kind === "circle") {
    const radius = Math.hypot(b[0] - a[0], b[1] - a[1]);
    outlined(ctx, color, dashed, () => ctx.arc(a[0], a[1], radius, 0, 2 * Math.PI));
  } else if (mark.kind === "caliper" || mark.kind === "calibration") {
    const len = Math.hypot(b[0] - a[0], b[1] - a[1]) || 1;
    const nx = (-(b[1] - a[1]) / len) * 7, ny = ((b[0] - a[0]) / len) * 7;
    outlined(ctx, color, dashed, () => {
      ctx.moveTo(...a);
      ctx.lineTo(...b);
      for (const [px, py] of [a, b]) { ctx.moveTo(px - nx, py - ny); ctx.lineTo(px + nx, py + ny); }
    });
    // In mm once the depth scale is calibrated; otherwise the protocol's normalized length.
    const [[x0, y0], [x1, y1]] = mark.points;
    const value = typeof mark.length === "number" ? mark.length : Math.hypot(x1 - x0, y1 - y0);
    const mx = (a[0] + b[0]) / 2 + nx * 2.5, my = (a[1] + b[1]) / 2 + ny * 2.5;
    let text = `${value.toFixed(3)} (uncalibrated)`;
    if (mark.kind === "calibration") text = `depth scale ${mark.mm} mm`;
    else if (scale) text = `${(len * scale).toFixed(1)} mm`;
    label(ctx, color, text, mx, my, "center");
  }
}

function drawPointer(ctx, r, p, now) {
  const age = now - p.at;
  const fade = Math.max(0, age - POINTER_TTL_MS) / POINTER_FADE_MS;
  const x = r.x + p.x * r.width, y = r.y + p.y * r.height;
  ctx.save();
  ctx.globalAlpha = Math.max(0, 1 - fade);
  outlined(ctx, POINTER_COLOR, false, () => ctx.arc(x, y, 13, 0, 2 * Math.PI), 4);
  ctx.beginPath();
  ctx.arc(x, y, 4, 0, 2 * Math.PI);
  Object.assign(ctx, { fillStyle: POINTER_COLOR, lineWidth: 1.5, strokeStyle: OUTLINE });
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}

function drawGuidance(ctx, r, g) {
  const dir = g.direction || "";
  const symbol = SCREEN_ARROW[dir] || DIRECTION_SYMBOL[dir] || CUE_SYMBOL[g.cue] || "•";
  const cue = g.cue ? g.cue[0].toUpperCase() + g.cue.slice(1) : "";
  const text = [cue, dir.replace(/_/g, " ")].filter(Boolean).join(" ");
  const bh = Math.min(96, Math.max(48, r.height * 0.16)), top = r.y + r.height - bh;
  const pad = bh * 0.2, sw = bh * 0.9, tx = r.x + 2 * pad + sw, room = r.x + r.width - pad - tx;
  ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
  ctx.fillRect(r.x, top, r.width, bh);
  const color = ROLE_COLOR[g.author_role] || ROLE_COLOR.expert;
  label(ctx, color, symbol, r.x + pad + sw / 2, top + bh / 2, "center", bh * 0.7);
  const y = top + bh * (g.note ? 0.32 : 0.5);
  label(ctx, "#ffffff", text, tx, y, "left", bh * (g.note ? 0.32 : 0.4), room);
  if (g.note) label(ctx, "#dddddd", g.note, tx, top + bh * 0.72, "left", bh * 0.24, room);
}
