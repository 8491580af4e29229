// Media with the relay: one RTCPeerConnection per page, offered through the live room
// (rtc_offer → answer). The relay forwards RTP packets; see docs/protocol.md, "Media".

const GATHER_TIMEOUT_MS = 3000;
// Simulcast (docs/protocol.md, "Simulcast"): while more than one expert or observer watches, the
// bedside sends its picture at full size, half and a quarter, the smaller two capped low so the
// full-size layer keeps the uplink; the relay sends each subscriber the largest its downlink
// carries. Otherwise one encoding: as a simulcast layer the full-size picture needs 600 kbit/s
// or it stops (Chromium's minimum for 720p), where alone it goes down to what the uplink carries.
const LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 450_000 },
  { rid: "f", scaleResolutionDownBy: 1 },
];
// Voice slots for further experts' voices (nobody renegotiates when someone joins).
const EXTRA_VOICE_SLOTS = 2;

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

// role: operator publishes `stream` (video + voice); expert and observer receive, and an
// expert sends the microphone track of `stream` if it has one. onTrack(track, transceiverIndex).
// simulcast: whether the operator sends the three layers (more than one subscriber).
export async function connectMedia(live, { role, stream, iceServers, onTrack, onState, simulcast }) {
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
  const video = stream?.getVideoTracks()[0] || null;
  const voice = stream?.getAudioTracks()[0] || null;
  if (role === "operator") {
    // Ultrasound is fine detail on a still-ish picture: on a poor link keep the resolution
    // and give up frame rate rather than the other way round.
    if (video) video.contentHint = "detail";
    const init = { direction: "sendonly", streams: [stream] };
    if (simulcast && video) init.sendEncodings = LAYERS;
    const sender = pc.addTransceiver(video, init).sender;
    const parameters = sender.getParameters();
    parameters.degradationPreference = "maintain-resolution";
    sender.setParameters(parameters).catch(() => {}); // not every browser lets it be set before negotiation
    pc.addTransceiver(voice || "audio", { direction: "sendrecv" });
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    const speaks = role === "expert" && voice;
    pc.addTransceiver(speaks ? voice : "audio", { direction: speaks ? "sendrecv" : "recvonly" });
  }
  for (let i = 0; i < EXTRA_VOICE_SLOTS; i++) pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    const index = pc.getTransceivers().indexOf(event.transceiver);
    onTrack?.(event.track, index);
  });
  pc.addEventListener("connectionstatechange", () => onState?.(pc.connectionState));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  try {
    const answer = await live.call("rtc_offer", {
      sdp: pc.localDescription.sdp,
      type: "offer",
    });
    await pc.setRemoteDescription(answer);
  } catch (error) {
    pc.close();
    throw error;
  }
  return pc;
}

// Whether the full-size simulcast layer is being sent, at FULL_LAYER_MIN_FPS or more since the
// last call for this connection: a browser whose uplink cannot carry every layer stops the
// largest first, or starts and stops it.
const FULL_LAYER_MIN_FPS = 10;
const fullSent = new WeakMap();

export async function fullLayerSending(pc) {
  let frames = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video" && s.rid === "f") frames = s.framesEncoded || 0;
  });
  const now = performance.now();
  const before = fullSent.get(pc);
  fullSent.set(pc, { frames, at: now });
  if (!before) return true;
  return frames - before.frames >= (FULL_LAYER_MIN_FPS * (now - before.at)) / 1000;
}

// Connection quality from the browser's own statistics: "good", "fair", "poor". Loss is over
// the time since the previous call for this connection (counters are cumulative), so a past
// bad moment does not keep the rating down.
const previous = new WeakMap();

export async function quality(pc) {
  let lost = 0, received = 0, rtt = null;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" || s.type === "remote-inbound-rtp") {
      lost += Math.max(0, s.packetsLost || 0);
      received += s.packetsReceived || 0;
    }
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) {
      rtt = s.currentRoundTripTime * 1000;
    }
  });
  const before = previous.get(pc) || { lost: 0, received: 0 };
  previous.set(pc, { lost, received });
  const newLost = Math.max(0, lost - before.lost), newReceived = Math.max(0, received - before.received);
  const loss = newReceived + newLost > 0 ? (100 * newLost) / (newReceived + newLost) : 0;
  const level = loss > 5 || (rtt ?? 0) > 400 ? "poor" : loss > 1 || (rtt ?? 0) > 150 ? "fair" : "good";
  return { level, loss, rtt };
}
