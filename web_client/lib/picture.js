// What the expert actually sees: the frames the <video> presents, counted as they are shown.
// The picture is "frozen" when no new frame has been presented for FROZEN_AFTER_MS, and "below
// diagnostic quality" when, for longer than the room's floor allows, fewer frames per second
// than the floor arrived or they were smaller than the largest this connection has shown (the
// bedside's source: its page keeps the resolution and gives up frame rate first). The connection
// badge must never say "good" over either.

const FROZEN_AFTER_MS = 1000;
const CHECK_EVERY_MS = 250;
const WINDOW_MS = 1000;

export class PictureWatch {
  // video: the <video>; floor: {fps, seconds} from room_state.quality; onChange(state) on every
  // change of state: {state: "waiting" | "live" | "below" | "frozen", fps, width, height, source}.
  constructor(video, onChange) {
    this.video = video;
    this.onChange = onChange;
    this.floor = { fps: 15, seconds: 2 };
    this.times = [];          // presentation times (ms) of the frames in the last WINDOW_MS
    this.last = 0;            // when the last frame was presented (0: none yet)
    this.size = { width: 0, height: 0 };
    this.source = { width: 0, height: 0 }; // the largest size seen since the picture started
    this.belowSince = null;
    this.state = { state: "waiting", fps: 0, width: 0, height: 0, source: this.source };
    if (video.requestVideoFrameCallback) {
      const tick = (now, meta) => {
        this.frame(now, meta.width, meta.height);
        video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    }
    setInterval(() => this.check(performance.now()), CHECK_EVERY_MS);
  }

  setFloor(floor) {
    if (floor) this.floor = { fps: floor.fps, seconds: floor.seconds };
  }

  // A new stream (a new peer connection): its source size is learnt again.
  restart() {
    this.times = [];
    this.last = 0;
    this.newSource();
  }

  // The bedside (re)joined, perhaps with another camera or capture card: its size is learnt
  // again, so a smaller native size is not taken for a degraded picture.
  newSource() {
    this.source = { width: 0, height: 0 };
    this.belowSince = null;
    this.check(performance.now());
  }

  frame(now, width, height) {
    this.last = now;
    this.times.push(now);
    this.size = { width, height };
    if (width * height > this.source.width * this.source.height) this.source = { width, height };
  }

  check(now) {
    while (this.times.length && this.times[0] < now - WINDOW_MS) this.times.shift();
    const fps = this.times.length * (1000 / WINDOW_MS);
    let state;
    if (!this.last) state = "waiting";
    else if (now - this.last > FROZEN_AFTER_MS) state = "frozen";
    else {
      const small = this.size.width * this.size.height < this.source.width * this.source.height;
      const below = fps < this.floor.fps || small;
      if (!below) this.belowSince = null;
      else if (this.belowSince === null) this.belowSince = now;
      state = below && now - this.belowSince > this.floor.seconds * 1000 ? "below" : "live";
    }
    if (state === "frozen") this.belowSince = null;
    const next = { state, fps, width: this.size.width, height: this.size.height, source: this.source };
    const changed = next.state !== this.state.state
      || (state === "below" && (next.fps !== this.state.fps || next.width !== this.state.width));
    this.state = next;
    if (changed) this.onChange?.(next);
  }
}
