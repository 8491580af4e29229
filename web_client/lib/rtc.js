// Media with the relay: one RTCPeerConnection per page, offered through the live room
// (rtc_offer → answer). The relay forwards encoded frames; see docs/protocol.md, "Media".

const GATHER_TIMEOUT_MS = 3000;
// Simulcast (docs/protocol.md, "Simulcast"): the bedside sends its picture at full size and, while
// more than one expert or observer watches, at half and a quarter too, each capped low so the
// full-size layer keeps the uplink (the browser drops the largest layer first when the uplink
// cannot carry them all). The relay sends each subscriber the largest its downlink carries.
const LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 450_000 },
  { rid: "f", scaleResolutionDownBy: 1 },
];
const FULL = "f";
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
// smaller: whether the smaller layers are sent too (more than one subscriber).
export async function connectMedia(live, { role, stream, iceServers, onTrack, onState, smaller }) {
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
  const video = stream?.getVideoTracks()[0] || null;
  const voice = stream?.getAudioTracks()[0] || null;
  if (role === "operator") {
    // Ultrasound is fine detail on a still-ish picture: on a poor link keep the resolution
    // and give up frame rate rather than the other way round.
    if (video) video.contentHint = "detail";
    const sendEncodings = LAYERS.map((layer) => ({ ...layer, active: layer.rid === FULL || !!smaller }));
    const sender = pc.addTransceiver(video, { direction: "sendonly", streams: [stream], sendEncodings }).sender;
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

// Send the smaller simulcast layers or not (the full-size one is always sent).
export async function sendSmallerLayers(pc, on) {
  const sender = pc?.getSenders().find((s) => s.track?.kind === "video");
  if (!sender) return;
  const parameters = sender.getParameters();
  let changed = false;
  for (const encoding of parameters.encodings || []) {
    const active = encoding.rid === FULL || encoding.rid === undefined || on;
    if (encoding.active !== active) {
      encoding.active = active;
      changed = true;
    }
  }
  if (changed) await sender.setParameters(parameters).catch(() => {});
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
