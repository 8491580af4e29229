// The live room on Socket.IO /live: connection, acknowledged calls, reconnection.
// The server sends room_state on every (re)connection, so a page rebuilds its view from it.
import { io } from "/static/vendor/socket.io.esm.min.js";
import { ApiError } from "./api.js";

const CALL_TIMEOUT_MS = 20000;

export class Live {
  constructor(token) {
    this.socket = io("/live", {
      auth: { token },
      transports: ["websocket"],
      reconnectionDelay: 500,
      reconnectionDelayMax: 4000,
    });
  }

  on(event, handler) {
    this.socket.on(event, handler);
    return this;
  }

  // An event with its acknowledgement: resolves with the result, rejects with ApiError.
  call(event, payload, timeoutMs = CALL_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.socket.connected) {
        reject(new ApiError(0, { code: "offline", message: "not connected to the room" }));
        return;
      }
      this.socket.timeout(timeoutMs).emit(event, payload, (timedOut, ack) => {
        if (timedOut) reject(new ApiError(0, { code: "timeout", message: `no answer to ${event}` }));
        else if (ack && ack.error) reject(new ApiError(400, ack.error));
        else resolve(ack);
      });
    });
  }

  // Pointers are ephemeral: sent without waiting, dropped while offline.
  send(event, payload) {
    if (this.socket.connected) this.socket.emit(event, payload);
  }

  get connected() {
    return this.socket.connected;
  }

  // False once the server refused the connection: Socket.IO then stops retrying by itself.
  get active() {
    return this.socket.active;
  }

  reopen() {
    if (!this.socket.active) this.socket.connect();
  }

  close() {
    this.socket.close();
  }
}
