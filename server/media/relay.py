"""The SFU-lite relay: one media room per consultation, forwarding RTP packets.

The operator's offer publishes (video + voice); an expert's or observer's offer
subscribes to that video and voice. Audio transceivers a client offers beyond
the first, and the operator's first one, are voice slots: each expert's voice is
forwarded into a free slot of every other participant, so nobody renegotiates
when someone joins or leaves. The publisher's video codec, once negotiated, is
the room's: every later offer is answered with that codec only, because
nothing on the forwarding path can transcode.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.sdp import SessionDescription

from server.auth import Role
from server.errors import BadRequest, Conflict
from server.media.capture import CineBuffer
from server.media.congestion import DownlinkLimit
from server.media.fanout import Forwarder, Source
from server.media.feedback import DEFAULT_POLICY, BitratePolicy, PublisherFeedback
from server.media.hooks.packets import PacketSender, take_packets
from server.media.hooks.receive import on_keyframe_request, request_keyframe
from server.media.hooks.transport import (
    accept_stream_ids,
    negotiate_transport_cc,
    on_receiver_reports,
)
from server.media.peer import Peer
from server.media.sdp import (
    announce,
    answer_simulcast,
    check_size,
    restrict_video_codec,
    simulcast_rids,
    video_codec,
)
from server.media.stats import rates, sample

# Makes the cine buffer of a room's publisher: (codec, request_keyframe) -> buffer.
CineFactory = Callable[[str, Callable[[], None]], CineBuffer]

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_MIN_INTERVAL_SECONDS = 0.5


class MediaRoom:
    """A consultation's media: the publisher, the subscribers, the voices."""

    def __init__(
        self,
        consultation_id: str,
        cine_factory: CineFactory | None = None,
        policy: BitratePolicy = DEFAULT_POLICY,
        media_address: str | None = None,
    ):
        self.consultation_id = consultation_id
        self.cine_factory = cine_factory
        self.policy = policy
        # The address the answers' host candidates give (None: the interfaces' own).
        self.media_address = media_address
        # The current publisher's congestion feedback, which the subscribers' REMBs inform.
        self.feedback: PublisherFeedback | None = None
        # The current publisher's recent video, for captures (None: no publisher).
        self.cine: CineBuffer | None = None
        self.peers: dict[str, Peer] = {}
        self.publisher: str | None = None
        self.video: Source | None = None
        self.video_receiver: object | None = None
        self.audio: Source | None = None
        # The room's video codec (mime type), fixed by the first negotiation.
        self.codec: str | None = None
        self.video_outputs: set[Forwarder] = set()
        self.audio_outputs: set[Forwarder] = set()
        # Voices (experts' and the operator's microphones) by the sid that sends them.
        self.voices: dict[str, Source] = {}
        # Negotiations one at a time; the room is not closed while one is under way.
        self.negotiating = asyncio.Lock()
        self.pending = 0
        # Keyframe requests by SSRC (None: every source): when last sent, and which are due.
        self._keyframe_at: dict[int | None, float] = {}
        self._keyframe_pending: set[int | None] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # Keyframes

    def request_keyframe(self, ssrc: int | None = None) -> None:
        """Ask the publisher for a keyframe of one layer's SSRC (None: of each), at most every
        KEYFRAME_REQUEST_MIN_INTERVAL_SECONDS for each."""
        if ssrc in self._keyframe_pending:
            return
        last = self._keyframe_at.get(ssrc, 0.0)
        wait = last + KEYFRAME_REQUEST_MIN_INTERVAL_SECONDS - time.monotonic()
        self._keyframe_pending.add(ssrc)
        self._spawn(self._send_keyframe_request(ssrc, max(0.0, wait)))

    async def _send_keyframe_request(self, ssrc: int | None, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._keyframe_pending.discard(ssrc)
        self._keyframe_at[ssrc] = time.monotonic()
        receiver = self.video_receiver
        if receiver is not None:
            await request_keyframe(receiver, ssrc)  # type: ignore[arg-type]

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Negotiation

    async def offer(self, sid: str, sub: str, role: Role, sdp: str) -> RTCSessionDescription:
        """Answer a participant's offer; a new offer from the same socket replaces its peer."""
        check_size(sdp)
        offered = sdp
        await self.leave(sid)
        if role is Role.OPERATOR and self.publisher is not None:
            await self.leave(self.publisher)  # the operator reconnected: the old peer is gone
        if self.codec is not None:
            sdp = restrict_video_codec(sdp, self.codec)
        pc = RTCPeerConnection()
        peer = Peer(sid, sub, role, pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self._wire(peer, offered)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            answer = pc.localDescription
            text = answer.sdp
            if peer.simulcast is not None:
                text = answer_simulcast(text, *peer.simulcast)
            if self.media_address is not None:
                text = announce(text, self.media_address)
            answer = RTCSessionDescription(text, "answer")
        except (BadRequest, Conflict):
            await pc.close()
            raise
        except Exception as exc:
            await pc.close()
            raise BadRequest(
                f"the SDP offer could not be used ({type(exc).__name__})",
                code="invalid_sdp",
                field="sdp",
            ) from None
        self.peers[sid] = peer

        @pc.on("connectionstatechange")
        async def release_if_failed() -> None:
            # A failed or closed connection never recovers (aiortc restarts no ICE); its page
            # offers anew. Its socket may be held by another node that is gone: nobody else
            # would release it.
            if pc.connectionState in ("failed", "closed") and self.peers.get(sid) is peer:
                log.info("a media connection ended; released", extra={"role": role.value})
                await self.leave(sid)

        if role is Role.OPERATOR:
            self.publisher = sid
        self.codec = self.codec or video_codec(pc.localDescription.sdp)
        self._start(peer)
        return answer

    def _wire(self, peer: Peer, offer_sdp: str) -> None:
        """Attach tracks to the peer's transceivers, by role and order (`offer_sdp`: the offer
        as sent, with the simulcast lines aiortc's parser leaves out)."""
        video = [t for t in peer.pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise BadRequest("the offer has no video section", code="invalid_sdp", field="sdp")
        wanted = "recvonly" if peer.role is Role.OPERATOR else "sendonly"
        if video[0]._offerDirection not in (wanted, "sendrecv"):
            need = "send" if peer.role is Role.OPERATOR else "receive"
            raise BadRequest(
                f"a {peer.role}'s offer must {need} video", code="invalid_sdp", field="sdp"
            )
        offered = SessionDescription.parse(peer.pc.remoteDescription.sdp).media
        audio_index = 0
        video_done = False
        for transceiver in peer.pc.getTransceivers():
            # aiortc stores the offer's direction reversed, from our side.
            ours = transceiver._offerDirection or "inactive"
            client_sends = ours in ("recvonly", "sendrecv")
            client_receives = ours in ("sendonly", "sendrecv")
            # Receive only what a Source reads: anything else would queue unread forever.
            reads = sends = False
            if transceiver.kind == "video" and not video_done:
                video_done = True
                if peer.role is Role.OPERATOR and client_sends:
                    source = Source("video")
                    receiver = transceiver.receiver
                    take_packets(receiver, source.on_packet, repair=True)
                    media = next(m for m in offered if m.rtp.muxId == transceiver.mid)
                    if negotiate_transport_cc(transceiver, media, self.policy.start_kbps):
                        peer.feedback = PublisherFeedback(
                            transceiver.receiver, self.policy, self._publisher_limits
                        )
                    rids = simulcast_rids(offer_sdp, str(transceiver.mid))
                    if rids:
                        accept_stream_ids(transceiver, media)
                        peer.simulcast = (str(transceiver.mid), rids)
                    peer.sources.append(source)
                    self.video_receiver = transceiver.receiver
                    reads = True
                elif peer.role is not Role.OPERATOR and client_receives:
                    self._send(peer, transceiver, self.video_outputs, "video", peer.outputs)
                    sends = True
            elif transceiver.kind == "audio":
                first = audio_index == 0
                audio_index += 1
                if first and client_sends and peer.role is not Role.OBSERVER:
                    source = Source("audio")
                    take_packets(transceiver.receiver, source.on_packet, repair=False)
                    peer.sources.append(source)
                    reads = True
                if client_receives and first and peer.role is not Role.OPERATOR:
                    self._send(peer, transceiver, self.audio_outputs, "audio", peer.outputs)
                    sends = True
                elif client_receives:
                    slot = Forwarder(
                        "audio", PacketSender(transceiver.sender), self.request_keyframe
                    )
                    peer.slots.append(slot)
                    peer.slot_voice.append(None)
                    sends = True
            transceiver.direction = {
                (True, True): "sendrecv",
                (True, False): "recvonly",
                (False, True): "sendonly",
                (False, False): "inactive",
            }[(reads, sends)]

    def _send(
        self,
        peer: Peer,
        transceiver: RTCRtpTransceiver,
        outputs: set[Forwarder],
        kind: str,
        owned: list[Forwarder],
    ) -> None:
        # Without simulcast, an expert's congested downlink lowers the publisher's rate (to the
        # floor at most); an observer's (a trainee's) does not. With it, each gets its layer.
        forwarder = Forwarder(
            kind,
            PacketSender(transceiver.sender),
            self.request_keyframe,
            limits_publisher=peer.role is Role.EXPERT,
        )
        if kind == "video":
            on_keyframe_request(transceiver.sender, forwarder.ask_keyframe)
            on_receiver_reports(
                transceiver.sender,
                lambda bps: self._subscriber_estimate(forwarder, bps),
                lambda fraction: self._subscriber_loss(forwarder, fraction),
            )
        outputs.add(forwarder)
        owned.append(forwarder)

    def _subscriber_estimate(self, track: Forwarder, estimate_bps: int) -> None:
        """A subscriber's REMB: what its downlink carries, and so which layer it is sent."""
        now = time.monotonic()
        track.downlink.report(estimate_bps, track.sent_bps(now), now)
        track.layer.report(estimate_bps, now)
        self._choose_layer(track, now)

    def _subscriber_loss(self, track: Forwarder, fraction: float) -> None:
        """A subscriber's receiver report: the share of what it was sent that it lost."""
        now = time.monotonic()
        track.downlink.report_loss(fraction, track.sent_bps(now), now)
        track.layer.report_loss(fraction, track.sent_bps(now), now)
        self._choose_layer(track, now)

    def _choose_layer(self, track: Forwarder, now: float) -> None:
        source = self.video
        if source is None or source.layers is None:
            return
        layer = track.layer.choose(source.layers.ranked(now), now)
        if layer is not None:
            track.switch_to(layer.ssrc)

    def _publisher_limits(self) -> list[DownlinkLimit]:
        """The downlinks that limit the publisher's rate: none while it sends simulcast (each
        subscriber is sent the layer its downlink carries), else the experts'."""
        source = self.video
        if source is not None and source.layers is not None:
            if len(source.layers.ranked(time.monotonic())) > 1:
                return []
        return [f.downlink for f in self.video_outputs if f.limits_publisher]

    def _start(self, peer: Peer) -> None:
        if peer.feedback is not None:
            self.feedback = peer.feedback
            peer.feedback.start()
        for source in peer.sources:
            if peer.role is Role.OPERATOR and source.kind == "video":
                self.video = source
                source.on_resume = self.request_keyframe
                if self.cine_factory is not None and self.codec is not None:
                    self.cine = source.cine = self.cine_factory(
                        self.codec, functools.partial(self._cine_keyframe, source)
                    )
                for output in self.video_outputs:
                    source.attach(output)
            elif peer.role is Role.OPERATOR:
                self.audio = source
                for output in self.audio_outputs:
                    source.attach(output)
                self.voices[peer.sid] = source
            else:
                self.voices[peer.sid] = source
        if peer.role is not Role.OPERATOR:
            for output in peer.outputs:
                current = self.video if output.kind == "video" else self.audio
                if current is not None:
                    current.attach(output)
        self._assign_voices()

    def _cine_keyframe(self, source: Source) -> None:
        self.request_keyframe(source.top_ssrc)

    def _assign_voices(self) -> None:
        """Give every other participant's voice a slot in each peer, where slots allow."""
        for peer in self.peers.values():
            wanted = [
                sid
                for sid in self.voices
                if sid != peer.sid and not self._is_operator_voice_for_subscriber(sid, peer)
            ]
            for index, voice in enumerate(peer.slot_voice):
                if voice is not None and voice not in wanted:
                    source = self.voices.get(voice)
                    if source is not None:
                        source.detach(peer.slots[index])
                    peer.slot_voice[index] = None
            for sid in wanted:
                if sid in peer.slot_voice:
                    continue
                if None not in peer.slot_voice:
                    break
                index = peer.slot_voice.index(None)
                peer.slot_voice[index] = sid
                self.voices[sid].attach(peer.slots[index])

    def _is_operator_voice_for_subscriber(self, voice_sid: str, peer: Peer) -> bool:
        # Subscribers hear the operator on their first audio transceiver, not in a slot.
        return voice_sid == self.publisher and peer.role is not Role.OPERATOR

    async def leave(self, sid: str) -> None:
        """Release a participant's peer connection, tasks and tracks; others carry on."""
        peer = self.peers.pop(sid, None)
        if peer is None:
            return
        if self.publisher == sid:
            self.publisher = None
            self.video = self.audio = None
            self.video_receiver = None
            self.cine = None
            self.feedback = None
        if peer.feedback is not None:
            await peer.feedback.stop()
        self.voices.pop(sid, None)
        for source in peer.sources:
            source.stop()
        for track in [*peer.outputs, *peer.slots]:
            for current in (self.video, self.audio, *self.voices.values()):
                if current is not None:
                    current.detach(track)
            self.video_outputs.discard(track)
            self.audio_outputs.discard(track)
        await peer.pc.close()
        self._assign_voices()

    async def close(self) -> None:
        for sid in list(self.peers):
            await self.leave(sid)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Relay:
    """Every media room on this node."""

    def __init__(
        self,
        cine_factory: CineFactory | None = None,
        policy: BitratePolicy = DEFAULT_POLICY,
        media_address: str | None = None,
    ) -> None:
        self.rooms: dict[str, MediaRoom] = {}
        self.cine_factory = cine_factory
        self.policy = policy
        self.media_address = media_address

    async def offer(
        self, consultation_id: str, sid: str, sub: str, role: Role, sdp: str
    ) -> RTCSessionDescription:
        room = self.rooms.get(consultation_id)
        if room is None:
            room = self.rooms[consultation_id] = MediaRoom(
                consultation_id, self.cine_factory, self.policy, self.media_address
            )
        room.pending += 1
        try:
            async with room.negotiating:
                return await room.offer(sid, sub, role, sdp)
        finally:
            room.pending -= 1
            await self._close_if_empty(consultation_id, room)

    async def statistics(self) -> dict[str, list[dict[str, Any]]]:
        """Each room's participants' current rates (since the previous call)."""
        now = time.monotonic()
        result: dict[str, list[dict[str, Any]]] = {}
        for consultation_id, room in list(self.rooms.items()):
            entries = []
            for peer in list(room.peers.values()):
                try:
                    current = await sample(peer.pc, peer.video_frames(), now)
                except Exception:
                    log.debug("no statistics for a closing peer", exc_info=True)
                    continue
                if peer.last_sample is not None:
                    rated = rates(peer.last_sample, current)
                    entries.append({"id": peer.sub, "role": peer.role.value, **rated})
                peer.last_sample = current
            if entries:
                result[consultation_id] = entries
        return result

    async def leave(self, consultation_id: str, sid: str) -> None:
        room = self.rooms.get(consultation_id)
        if room is None:
            return
        await room.leave(sid)
        await self._close_if_empty(consultation_id, room)

    async def _close_if_empty(self, consultation_id: str, room: MediaRoom) -> None:
        if not room.peers and not room.pending and self.rooms.get(consultation_id) is room:
            self.rooms.pop(consultation_id, None)
            await room.close()

    def peer_connections(self) -> int:
        return sum(len(r.peers) for r in self.rooms.values())

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await room.close()
        self.rooms.clear()
