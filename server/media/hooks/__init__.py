"""The aiortc hooks: received tracks yield encoded frames, so they are forwarded, not transcoded,
and the relay gets the congestion feedback and loss repair aiortc lacks.

This package reaches into aiortc internals; no other module does. `receive.py` holds the receive
and send path (1-5, 12), `jitter.py` the jitter buffer it swaps in (2), `transport.py` the
congestion feedback (6-11). It depends on aiortc == 1.16.0 (pinned in pyproject), and
`test_the_forwarding_hook_still_fits_aiortc` (tests/test_media_relay.py) fails if any of
these assumptions stops holding:

1. `aiortc.rtcrtpreceiver.decoder_worker` builds its decoder through the module
   global `get_decoder(codec)` and passes what `decoder.decode(jitter_frame)`
   returns to the track's queue. We replace that global with a factory whose
   decoder returns the jitter buffer's encoded frame as an `av.Packet`
   (pts = RTP timestamp, time base 1/clock rate): the received track then yields
   packets, and `RTCRtpSender` packs packets without encoding them.
2. The receiver's jitter buffer is `RTCRtpReceiver._RTCRtpReceiver__jitter_buffer`.
   The stock one releases a frame only when the next frame's first packet
   arrives (a frame time of delay per hop) and prefetches 4 audio packets
   (80 ms). We swap in one that releases a video frame at its marker bit and
   every audio packet at once.
3. A sender asks its own encoder for a keyframe through `RTCRtpSender._send_keyframe()`
   when a subscriber sends PLI/FIR; we route that to the publisher instead.
4. `RTCRtpReceiver._send_rtcp_pli(media_ssrc)` sends a PLI upstream.
5. The receiver hands complete frames to its decoder thread with
   `self._RTCRtpReceiver__decoder_queue.put((codec, frame))` from the event loop,
   `put(None)` to stop, and the thread reads that queue with `get()`. For the
   relay's own receivers we replace that queue with one that puts the packet
   straight on the track's queue: no thread hop per frame (the idle thread stays
   parked until the receiver stops).

The decoder factory is process-wide: in this process every aiortc receiver yields
packets. Code that needs pictures (captures, tests) decodes packets itself.

6. The answer's header extensions and codecs are `transceiver._headerExtensions` and
   `transceiver._codecs`, set by `setRemoteDescription` and read by `createAnswer` (and by the
   receiver's parameters when the connection starts). aiortc offers no transport-wide
   congestion control, so the publisher's answer gets it here, from what its offer proposed.
7. Every received RTP packet of a DTLS transport passes through
   `transport._rtp_router.route_rtp(packet)`, parsed with that transport's header extension
   map, which knows the transport-wide sequence number once it is negotiated (aiortc's `rtp.py`
   parses it). Padding-only probes pass there too, even when no receiver takes them.
8. A video receiver feeds `RTCRtpReceiver._RTCRtpReceiver__remote_bitrate_estimator` and sends
   its REMB; set to None, it sends none (the relay sends its own).
9. `RTCRtpSender._handle_rtcp_packet(packet)` gets each RTCP packet for the sender: a
   subscriber's REMB (`RtcpPsfbPacket`, fmt 15) and receiver reports (`reports`, by `ssrc`,
   with `fraction_lost`; the sender's own SSRC is `_ssrc`) are read there.
10. A sender keeps its last `rtcrtpsender.RTP_HISTORY_SIZE` packets to answer NACKs (keyed by
    sequence number modulo that size).
11. The ICE connection (`receiver.transport.transport._connection`, aioice) reads datagrams in
    its `_protocols`' `datagram_received(data, addr)`, one per socket read, through an asyncio
    datagram transport whose socket the kernel timestamps (SIOCGSTAMPNS).
12. Loss repair: the receiver's `_RTCRtpReceiver__nack_generator.missing` holds the sequence
    numbers still missing, `_send_rtcp_nack(ssrc, lost)` asks for them, `__rtx_ssrc` maps an RTX
    SSRC to its media SSRC, and `__timestamp_mapper.map` is applied to each frame's timestamp
    before the decoder queue (`InlineDelivery` applies it to the frames it releases itself).
"""
