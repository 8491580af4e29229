// What the bedside and expert pages share: joining the live room, drawing its marks, pointers
// and guidance on the overlay, the participant list, the key image gallery, the connection
// indicator and keeping the media connected across drops.
import { api, apiBlob, describe, el } from "./api.js";
import { Live } from "./live.js";
import { connectMedia, quality } from "./rtc.js";

const RECONNECT_AFTER_MS = 4000;
const QUALITY_EVERY_MS = 2000;

export class Room {
  // ui: {status, participants, gallery, log} elements (any may be missing).
  constructor(token, overlay, ui) {
    this.token = token;
    this.overlay = overlay;
    this.ui = ui;
    this.state = null;   // the last room_state
    this.pc = null;
    this.media = null;   // {role, stream, onTrack}: what to (re)connect
    this.gallery = new Map();
    this.handlers = {};
    this.live = new Live(token);
    const on = (event, fn) => this.live.on(event, fn);
    on("connect", () => this.indicate());
    on("disconnect", () => this.indicate());
    on("connect_error", (error) => {
      this.indicate();
      // Refusals carry our error object; transport failures are retried by Socket.IO.
      if (error?.data?.code) this.say(`Cannot join: ${error.data.message}`, true);
    });
    on("room_state", (state) => this.welcome(state));
    on("presence", (p) => this.people(p.participants));
    on("pointer", (p) => overlay.setPointer(p.from, p.x, p.y));
    on("mark", (m) => {
      overlay.addMark(m);
      this.describeMarks();
    });
    on("mark_clear", (c) => {
      overlay.removeMarks(c.ids);
      this.describeMarks();
    });
    on("guidance", (g) => this.guidance(g));
    on("key_image", (k) => this.addKeyImage(k));
    on("media_stats", (s) => this.handlers.stats?.(s.participants));
    setInterval(() => this.indicate(), QUALITY_EVERY_MS);
  }

  on(name, fn) {
    this.handlers[name] = fn;
    return this;
  }

  welcome(state) {
    const first = this.state === null;
    this.state = state;
    this.overlay.setMarks(state.marks);
    this.describeMarks();
    this.overlay.setGuidance(state.guidance);
    this.people(state.participants);
    this.handlers.state?.(state, first);
    if (first) this.loadGallery();
    // Every (re)connection renegotiates: after a drop the relay may have let the peer go.
    if (this.media) this.connect();
  }

  // The canvas is invisible to screen readers: the same facts as text.
  guidance(g) {
    this.overlay.setGuidance(g);
    if (this.ui.guidance && g) {
      const words = [g.cue, g.direction, g.note].filter(Boolean).join(" ").replaceAll("_", " ");
      this.ui.guidance.textContent = `Guidance: ${words}`;
    }
  }

  describeMarks() {
    if (!this.ui.marks) return;
    const marks = this.overlay.state.marks.length;
    this.ui.marks.textContent = marks ? `${marks} mark${marks === 1 ? "" : "s"} on the picture` : "No marks";
  }

  people(list) {
    if (!this.ui.participants) return;
    this.ui.participants.replaceChildren(
      ...list.map((p) => el("li", { "data-role": p.role },
        el("span", { class: "pill", text: p.role }), " ", p.name || p.id)),
    );
  }

  say(message, isError = false) {
    if (!this.ui.log) return;
    this.ui.log.prepend(el("li", { class: isError ? "error" : "", text: `${new Date().toLocaleTimeString()} ${message}` }));
  }

  // Media: start once, and again after any drop.
  startMedia(media) {
    this.media = media;
    if (this.live.connected && this.state) this.connect();
  }

  async connect() {
    if (this.connecting) return;
    this.connecting = true;
    const old = this.pc;
    this.pc = null;
    old?.close();
    try {
      this.pc = await connectMedia(this.live, {
        ...this.media,
        iceServers: this.state?.ice?.ice_servers,
        onState: (s) => this.mediaState(s),
      });
      this.say("Media connected");
    } catch (error) {
      this.say(`Media: ${describe(error)}`, true);
      if (error.code !== "codec_mismatch" && error.code !== "invalid_state") this.retrySoon();
    } finally {
      this.connecting = false;
      this.indicate();
    }
  }

  mediaState(s) {
    this.indicate();
    if (s === "failed" || s === "disconnected") this.retrySoon();
  }

  retrySoon() {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      const s = this.pc?.connectionState;
      if (this.live.connected && s !== "connected" && s !== "connecting") this.connect();
    }, RECONNECT_AFTER_MS);
  }

  async indicate() {
    const badge = this.ui.status;
    if (!badge) return;
    let level = "offline", text = "Offline: reconnecting…";
    if (this.live.connected) {
      const s = this.pc?.connectionState;
      if (s === "connected") {
        const q = await quality(this.pc);
        level = q.level;
        text = `${q.level[0].toUpperCase()}${q.level.slice(1)} connection` +
          (q.rtt != null ? ` · ${Math.round(q.rtt)} ms` : "") + ` · ${q.loss.toFixed(1)}% loss`;
      } else {
        level = "fair";
        text = this.media ? `Media ${s || "starting"}…` : "Connected";
      }
    }
    badge.className = `pill ${level}`;
    badge.textContent = text;
    badge.dataset.level = level;
    badge.dataset.media = this.live.connected ? this.pc?.connectionState || "none" : "offline";
  }

  // Key images: listed once on joining, then as the room announces them.
  async loadGallery() {
    try {
      const cid = this.state.consultation.id;
      const list = await api(this.token, `/api/consultations/${cid}/key-images`);
      for (const k of list.key_images || []) this.addKeyImage(k);
    } catch (error) {
      this.say(`Key images: ${describe(error)}`, true);
    }
  }

  async addKeyImage(k) {
    if (!this.ui.gallery || this.gallery.has(k.id)) return;
    this.handlers.keyImage?.(k);
    const img = el("img", { alt: `${k.kind} key image preview` });
    const download = el("a", { href: "#", text: "DICOM", "aria-label": `Download the DICOM of this ${k.kind}` });
    download.addEventListener("click", async (event) => {
      event.preventDefault();
      const blob = await apiBlob(this.token, `/api/key-images/${k.id}/dicom`);
      const link = el("a", { href: URL.createObjectURL(blob), download: `key-image-${k.id.slice(0, 8)}.dcm` });
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    });
    const figure = el("figure", { "data-key-image": k.id }, img,
      el("figcaption", {}, el("span", { text: k.kind }), download));
    this.gallery.set(k.id, figure);
    this.ui.gallery.prepend(figure);
    try {
      img.src = URL.createObjectURL(await apiBlob(this.token, `/api/key-images/${k.id}/preview`));
    } catch (error) {
      img.alt = `preview unavailable: ${describe(error)}`;
    }
  }
}
