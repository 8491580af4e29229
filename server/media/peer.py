"""One participant's peer connection in a media room, and what flows through it."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from server.auth import Role
from server.media.fanout import Forwarder, Source
from server.media.feedback import PublisherFeedback
from server.media.stats import Sample


@dataclass
class Peer:
    """One participant's peer connection and what flows through it."""

    sid: str
    sub: str
    role: Role
    pc: RTCPeerConnection
    # What this peer is sent: the operator's video and voice (subscribers).
    outputs: list[Forwarder] = field(default_factory=list)
    # Voice slots: audio this peer is sent from other participants' voices.
    slots: list[Forwarder] = field(default_factory=list)
    # sid of the voice each slot carries (None: free).
    slot_voice: list[str | None] = field(default_factory=list)
    # What this peer sends: video and voice (operator), voice (expert).
    sources: list[Source] = field(default_factory=list)
    # The last statistics sample, to compute rates from.
    last_sample: Sample | None = None
    # The publisher's congestion feedback (None: its offer did not negotiate it).
    feedback: PublisherFeedback | None = None
    # The publisher's simulcast: its video section's mid and the RIDs it sends (None: none).
    simulcast: tuple[str, list[str]] | None = None

    def video_frames(self) -> int:
        """Video frames received (publisher) or sent (subscriber) so far."""
        sources = sum(s.frames for s in self.sources if s.kind == "video")
        return sources + sum(t.frames_out for t in self.outputs if t.kind == "video")
