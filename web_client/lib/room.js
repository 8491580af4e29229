// What the bedside and expert pages share: joining the live room, drawing its marks, pointers
// and guidance on the overlay, the participant list, the key image gallery, the connection
// indicator and keeping the media connected across drops.
import { api, apiBlob, capturedAt, describe } from "./api.js";
import { $, el } from "./dom.js";
import { Live } from "./live.js";
import { connectMedia, fullLayerSending, quality } from "./rtc.js";

const RECONNECT_AFTER_MS = 4000;
const QUALITY_EVERY_MS = 2000;
// A bedside sending simulcast whose uplink has not carried the full-size layer for this long
// goes back to one encoding (the experts see the full picture, at what the uplink carries),
// and tries simulcast again after SIMULCAST_RETRY_MS, twice as long after each failure.
const FULL_LAYER_GRACE_MS = 15_000;
const SIMULCAST_RETRY_MS = 60_000;
const SIMULCAST_RETRY_MAX_MS = 16 * 60_000;
// Refusals that pass: the page tries again by itself rather than asking for a new link.
const TRANSIENT = new Set([
  "connecting_too_fast", "server_full", "store_busy", "store_unavailable", "bus_unavailable",
  "storage_full",
]);
// Why the server ends a participant's access (docs/protocol.md, `revoked`): for good, so a new
// join link would not help either.
const ENDED = new Set(["consultation_cancelled", "consultation_signed", "expert_reassigned", "expert_deactivated"]);

// The elements a live page shows the room in, by the ids every page uses (absent ones: null).
function pageElements() {
  return {
    status: $("connection"), participants: $("participants"), gallery: $("gallery"), log: $("log"),
    guidance: $("guidance-text"), marks: $("marks-text"), error: $("error"), voices: $("voices"),
  };
}

export class Room {
  // ui: {status, participants, gallery, log, error, voices, guidance, marks} elements (any may
  // be missing).
  constructor(token, overlay, ui = pageElements()) {
    this.token = token;
    this.overlay = overlay;
    this.ui = ui;
    this.state = null;   // the last room_state
    this.pc = null;
    this.media = null;   // {role, stream, onTrack}: what to (re)connect
    this.gallery = new Map();
    this.handlers = {};
    this.refusal = null; // the server's error object once it refused us
    this.participants = [];
    // The page's picture state ({state: "waiting" | "live" | "below" | "frozen", ...}), if it
    // shows a remote picture: the connection badge never says "good" over a bad one.
    this.picture = null;
    this.live = new Live(token);
    const on = (event, fn) => this.live.on(event, fn);
    on("connect", () => this.indicate());
    on("disconnect", () => this.indicate());
    on("connect_error", (error) => this.refused(error));
    // The server closes a socket it will not keep, saying why: access ended (`revoked`), the
    // link was opened elsewhere (`ended`), or the room could not be read (`room_error`).
    on("revoked", (r) => this.ended(r));
    on("ended", (e) => this.ended(e.error));
    on("room_error", (e) => this.refused({ data: e.error }));
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

  // Transport failures are retried by Socket.IO; a refusal by the server is not, so say why
  // and what to do rather than "reconnecting" for ever.
  refused(error) {
    if (this.live.active) return this.indicate();
    const refusal = error?.data;
    if (ENDED.has(refusal?.code)) this.ended(refusal);
    else if (TRANSIENT.has(refusal?.code)) {
      this.refusal = { ...refusal, text: `Cannot join the room right now: ${refusal.message}. Trying again.` };
      this.alert(this.refusal.text);
      clearTimeout(this.rejoin);
      this.rejoin = setTimeout(() => this.live.reopen(), RECONNECT_AFTER_MS);
    } else if (refusal?.code) {
      this.refusal = { ...refusal, text: `Cannot join the room: ${refusal.message}. Ask the coordinator for a new join link.` };
      this.alert(this.refusal.text);
    } else {
      // Refused without our error object (the server gave up on a half-open connection): not
      // about the token, so try again.
      clearTimeout(this.rejoin);
      this.rejoin = setTimeout(() => this.live.reopen(), RECONNECT_AFTER_MS);
    }
    this.indicate();
  }

  // The server ended our access (the report signed, the consultation cancelled, the expert
  // reassigned or deactivated, or the link opened in another window) and lets us go: say why,
  // and stop the media for good.
  ended(r) {
    // The same link opened in another tab or on another device took the room over: this tab
    // lets go (camera, microphone, media) and says how to bring it back.
    const text = r.code === "opened_elsewhere"
      ? "This link was opened in another tab or on another device: the room is shown there now, and this tab is no longer connected. Reload this page to use it here instead."
      : `This session has ended: ${r.message}.`;
    this.refusal = { ...r, ended: true, text };
    this.alert(this.refusal.text);
    this.media = null;
    clearTimeout(this.retry);
    clearTimeout(this.rejoin);
    this.pc?.close();
    this.pc = null;
    this.handlers.ended?.(this.refusal);
    this.indicate();
  }

  welcome(state) {
    const first = this.state === null;
    this.state = state;
    if (this.refusal) {
      this.refusal = null;
      this.clearError();
    }
    this.overlay.setMarks(state.marks);
    this.describeMarks();
    this.guidance(state.guidance);
    this.people(state.participants);
    this.handlers.state?.(state, first);
    // Again after a reconnection: key images made while we were away were announced without us.
    this.loadGallery();
    // Every (re)connection renegotiates: after a drop the relay may have let the peer go.
    if (this.media) this.connect();
  }

  // The canvas is invisible to screen readers: the same facts as text.
  guidance(g) {
    this.overlay.setGuidance(g);
    if (!this.ui.guidance) return;
    const words = g && [g.cue, g.direction, g.note].filter(Boolean).join(" ").replaceAll("_", " ");
    this.ui.guidance.textContent = g ? `Guidance: ${words}` : "";
  }

  describeMarks() {
    if (!this.ui.marks) return;
    const marks = this.overlay.state.marks.length;
    this.ui.marks.textContent = marks ? `${marks} mark${marks === 1 ? "" : "s"} on the picture` : "No marks";
  }

  people(list) {
    this.participants = list;
    this.followSimulcast();
    this.handlers.people?.(list);
    if (!this.ui.participants) return;
    this.ui.participants.replaceChildren(
      ...list.map((p) => el("li", { "data-role": p.role },
        el("span", { class: "pill", text: p.role }), " ", p.name || p.id)),
    );
  }

  // The bedside sends simulcast while more than one expert or observer watches, unless its
  // uplink could not carry the full-size layer lately.
  wantsSimulcast() {
    const watching = this.participants.filter((p) => p.role === "expert" || p.role === "observer");
    return watching.length > 1 && Date.now() >= (this.simulcastOffUntil || 0);
  }

  // The bedside offers again when simulcast is wanted or no longer (the experts see the new
  // video from its first keyframe, as after any reconnection).
  followSimulcast() {
    if (this.media?.role !== "operator" || this.simulcast === undefined) return;
    if (this.simulcast !== this.wantsSimulcast()) this.connect(); // after an offer under way
  }

  async checkFullLayer() {
    if (!this.simulcast || this.pc?.connectionState !== "connected") {
      this.fullMissingSince = null;
      return;
    }
    const now = Date.now();
    if (await fullLayerSending(this.pc).catch(() => true)) {
      this.fullMissingSince = null;
      if (now - (this.simulcastSince || now) > SIMULCAST_RETRY_MAX_MS) this.simulcastRetry = null;
    } else if (!this.fullMissingSince) {
      this.fullMissingSince = now;
    } else if (now - this.fullMissingSince > FULL_LAYER_GRACE_MS) {
      this.simulcastRetry = Math.min(2 * (this.simulcastRetry || SIMULCAST_RETRY_MS / 2), SIMULCAST_RETRY_MAX_MS);
      this.simulcastOffUntil = now + this.simulcastRetry;
      this.fullMissingSince = null;
      this.say("The uplink cannot carry the full picture and smaller copies: sending the full picture only");
    }
  }

  say(message, isError = false) {
    if (!this.ui.log) return;
    this.ui.log.prepend(el("li", { class: isError ? "error" : "", text: `${new Date().toLocaleTimeString()} ${message}` }));
  }

  // A failure the user must see (the activity log scrolls and may be off screen).
  alert(message) {
    if (this.ui.error) this.ui.error.textContent = message;
    this.say(message, true);
  }

  // Before a new action: its old error goes, but not a refusal to join, which still holds.
  clearError() {
    if (this.ui.error) this.ui.error.textContent = this.refusal?.text || "";
  }

  // One <audio> per voice slot, reused by every (re)connection: the previous peer
  // connection's tracks have ended, and a new element each time would pile up.
  voice(track, slot) {
    if (!this.ui.voices) return;
    let audio = this.ui.voices.querySelector(`audio[data-slot="${slot}"]`);
    if (!audio) {
      audio = el("audio", { autoplay: true, "data-slot": slot });
      this.ui.voices.append(audio);
    }
    audio.srcObject = new MediaStream([track]);
  }

  // Media: start once, and again after any drop.
  startMedia(media) {
    this.media = media;
    if (this.live.connected && this.state) this.connect();
  }

  // A reconnection or a new stream while an offer is out: offer again once it is answered,
  // rather than keep a peer connection with the old stream.
  async connect() {
    if (this.connecting) {
      this.again = true;
      return;
    }
    this.connecting = true;
    try {
      do {
        this.again = false;
        await this.offer();
      } while (this.again && this.live.connected);
    } finally {
      this.connecting = false;
      this.indicate();
    }
  }

  async offer() {
    const old = this.pc;
    this.pc = null;
    old?.close();
    try {
      const simulcast = (this.simulcast = this.wantsSimulcast());
      if (simulcast) this.simulcastSince = Date.now();
      this.pc = await connectMedia(this.live, {
        ...this.media,
        iceServers: this.state?.ice?.ice_servers,
        onState: (s) => this.mediaState(s),
        simulcast,
      });
      this.say("Media connected");
    } catch (error) {
      // These two will not change by trying again: the user must see them.
      if (error.code === "codec_mismatch" || error.code === "invalid_state") this.alert(`Media: ${describe(error)}`);
      else {
        this.say(`Media: ${describe(error)}`, true);
        this.retrySoon();
      }
    }
  }

  mediaState(s) {
    this.handlers.media?.(s);
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
    if (this.media?.role === "operator") {
      await this.checkFullLayer();
      this.followSimulcast();
    }
    const badge = this.ui.status;
    if (!badge) return;
    let level = "offline", text = "Offline: reconnecting…", figures = "";
    if (this.refusal && !this.live.connected) text = this.refusal.ended ? "Session ended" : "Not admitted: see the message";
    else if (this.live.connected) {
      const s = this.pc?.connectionState;
      // getStats on a connection closed meanwhile rejects: say it as a connection state.
      const q = s === "connected" && (await quality(this.pc).catch(() => null));
      this.lastQuality = q || null;
      const shown = this.picture?.().state;
      if (q) {
        level = q.level;
        text = `${q.level[0].toUpperCase()}${q.level.slice(1)} connection`;
        figures = (q.rtt != null ? ` · ${Math.round(q.rtt)} ms` : "") + ` · ${q.loss.toFixed(1)}% loss`;
        // What the picture shows outranks what the network statistics say.
        if (shown === "frozen") [level, text] = ["poor", "Picture frozen"];
        else if (shown === "below" && level === "good") [level, text] = ["fair", "Below diagnostic quality"];
      } else {
        level = "fair";
        text = this.media ? `Media ${s || "starting"}…` : "Connected";
      }
    }
    badge.className = `pill ${level}`;
    // The badge is a live region: rewrite (and so announce) only a change of state, not the
    // figures that change every two seconds (hidden from screen readers).
    if (badge.childElementCount !== 2 || badge.firstChild.textContent !== text) {
      badge.replaceChildren(el("span", { text }), el("span", { "aria-hidden": "true" }));
    }
    badge.lastChild.textContent = figures;
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
      try {
        const blob = await apiBlob(this.token, `/api/key-images/${k.id}/dicom`);
        const link = el("a", { href: URL.createObjectURL(blob), download: `key-image-${k.id.slice(0, 8)}.dcm` });
        link.click();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      } catch (error) {
        this.alert(`DICOM download: ${describe(error)}`);
      }
    });
    // Opened in the page's viewer, where there is one.
    const opener = this.handlers.openKeyImage;
    const picture = opener ? el("button", { type: "button", class: "open", "aria-label": `Open this ${k.kind}`, onclick: () => opener(k) }, img) : img;
    const figure = el("figure", { "data-key-image": k.id }, picture,
      el("figcaption", {}, el("span", { text: k.kind }),
        k.created_at ? el("time", { datetime: k.created_at, text: capturedAt(k.created_at) }) : null, download));
    this.gallery.set(k.id, figure);
    this.ui.gallery.prepend(figure);
    try {
      img.src = URL.createObjectURL(await apiBlob(this.token, `/api/key-images/${k.id}/preview`));
      // Once decoded the picture stays on screen: the blob need not stay in memory.
      const release = () => URL.revokeObjectURL(img.src);
      img.addEventListener("load", release, { once: true });
      img.addEventListener("error", release, { once: true });
    } catch (error) {
      img.alt = `preview unavailable: ${describe(error)}`;
    }
  }
}
