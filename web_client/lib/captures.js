// The capture buttons of the bedside and expert pages: a still, the last seconds, a recording
// started and stopped. One capture of a kind at a time (a double click makes one); the
// recording's state changes only once the server said so, and after a server restart it shows
// what the server says (no_recording: it has forgotten it; recording_active: it still has one).
import { ApiError, describe } from "./api.js";
import { $, el } from "./dom.js";

export const CAPTURE_BUTTONS = { still: "capture-still", clip: "capture-clip", record: "record" };
const TIMEOUT_MS = 60000;

export class Captures {
  // room: the page's Room; still: how this page takes a still (default: the server's frame);
  // fail: how it shows an error.
  constructor(room, { still, fail } = {}) {
    this.room = room;
    this.still = still ?? (() => this.server({ kind: "still" }, "Still captured"));
    this.fail = fail ?? ((error) => room.alert(describe(error)));
    this.busy = new Set();
    this.recording = false;
  }

  async act(kind) {
    if (this.busy.has(kind)) return;
    this.busy.add(kind);
    $(CAPTURE_BUTTONS[kind]).setAttribute("aria-busy", "true");
    this.room.clearError();
    try {
      if (kind === "still") await this.still();
      else if (kind === "clip") {
        const seconds = Number($("clip-seconds").value) || 6;
        await this.server({ kind: "clip", seconds }, `Last ${seconds} s saved`);
      } else await this.toggleRecording();
    } catch (error) {
      this.fail(error);
    } finally {
      this.busy.delete(kind);
      $(CAPTURE_BUTTONS[kind]).removeAttribute("aria-busy");
    }
  }

  async server(payload, said) {
    await this.room.live.call("capture", payload, TIMEOUT_MS);
    this.room.say(said);
  }

  async toggleRecording() {
    try {
      await this.room.live.call("capture", { kind: "clip", record: this.recording ? "stop" : "start" }, TIMEOUT_MS);
      this.show(!this.recording);
      this.room.say(this.recording ? "Recording…" : "Recording saved");
    } catch (error) {
      if (error instanceof ApiError && error.code === "no_recording") this.show(false);
      if (error instanceof ApiError && error.code === "recording_active") this.show(true);
      throw error;
    }
  }

  show(on) {
    this.recording = on;
    $("record").setAttribute("aria-pressed", String(on));
    $("record").replaceChildren(on ? "Stop recording" : "Record clip", el("kbd", { text: "R" }));
  }
}
