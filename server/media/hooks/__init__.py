"""The aiortc hooks: the relay forwards RTP packets as they arrive, not frames, and gets the
congestion feedback and loss repair aiortc lacks.

This package reaches into aiortc internals; no other module does. `packets.py` holds the packet
path (1-4), `receive.py` keyframe requests, loss repair and the bots' passthrough decoder (5-8),
`transport.py` the congestion feedback (9-13). It depends on aiortc == 1.16.0 (pinned in
pyproject; `check_version` refuses another at start), and
`test_the_forwarding_hook_still_fits_aiortc` (tests/test_media_relay.py) fails if any of these
assumptions stops holding:

1. `RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)` is called by the transport's
   router for every RTP packet of the receiver, by name, so an instance attribute replaces it.
   The relay's replacement keeps what the relay needs of it: the active sources
   (`__active_ssrc`, read by `getSynchronizationSources`), the statistics the receiver reports
   are built from (`__remote_streams`, a `StreamStatistics` per SSRC), RTX unwrapping
   (`__rtx_ssrc`, the codec's `apt`, `__codecs`; an RTX stream a simulcast offer did not name
   is learnt from the RID it repairs, which aiortc's `rtp.py` parses once the extension is
   negotiated, see 9) and NACKs (aiortc's `NackGenerator`, one per SSRC, and
   `_send_rtcp_nack`). It does not depayload, reassemble frames or decode. The transport's
   router hands the receiver every SSRC whose payload type only it has negotiated.
2. `RTCRtpSender.send(parameters)` starts `self._run_rtp(codec)`, looked up on the instance,
   once the transport is up, having configured `__rtp_header_extensions_map` (its `__ids`) and
   `__rtx_payload_type` and noted `__mid`; `stop()` waits for `__rtp_started` and
   `__rtp_exited`. The relay parks `_run_rtp` and sends itself, through
   `transport._send_rtp(bytes)` (SRTP protect, send), whose policy accepts any SSRC.
3. `_run_rtcp` builds the sender's reports from `__ntp_timestamp`, `__rtp_timestamp`,
   `__packet_count` and `__octet_count`; the relay keeps them up to date as it sends.
4. `RTCRtpSender._handle_rtcp_packet` answers a NACK by calling `self._retransmit(seq)`, looked
   up on the instance; the relay answers from the packets it sent.
5. A sender asks its own encoder for a keyframe through `RTCRtpSender._send_keyframe()` when a
   subscriber sends PLI/FIR; the relay routes that to the publisher instead.
6. `RTCRtpReceiver._send_rtcp_pli(media_ssrc)` sends a PLI upstream.
7. Loss repair: a `NackGenerator`'s `missing` holds the sequence numbers still missing, and
   `_send_rtcp_nack(ssrc, lost)` asks for them.
8. For the test and benchmark bots only: `aiortc.rtcrtpreceiver.decoder_worker` builds its
   decoder through the module global `get_decoder(codec)`; `install()` replaces it with one that
   hands each frame on as an `av.Packet`, so a bot counts encoded frames without decoding.
9. The answer's header extensions and codecs are `transceiver._headerExtensions` and
   `transceiver._codecs`, set by `setRemoteDescription` and read by `createAnswer` (and by the
   receiver's parameters when the connection starts). aiortc offers no transport-wide
   congestion control, so the publisher's answer gets it here, from what its offer proposed;
   likewise the RID header extensions (rtp-stream-id, repaired-rtp-stream-id) of a simulcast
   offer. aiortc writes no `a=rid`/`a=simulcast` lines: `sdp.py` adds them to the answer's
   text.
10. Every received RTP packet of a DTLS transport passes through
    `transport._rtp_router.route_rtp(packet)`, parsed with that transport's header extension
    map, which knows the transport-wide sequence number once it is negotiated (aiortc's `rtp.py`
    parses it). Padding-only probes pass there too, even when no receiver takes them.
11. A video receiver has a `_RTCRtpReceiver__remote_bitrate_estimator`; set to None, aiortc
    sends no REMB of its own (the relay sends its own).
12. `RTCRtpSender._handle_rtcp_packet(packet)` gets each RTCP packet for the sender: a
    subscriber's REMB (`RtcpPsfbPacket`, fmt 15) and receiver reports (`reports`, by `ssrc`,
    with `fraction_lost`; the sender's own SSRC is `_ssrc`) are read there.
13. The ICE connection (`receiver.transport.transport._connection`, aioice) reads datagrams in
    its `_protocols`' `datagram_received(data, addr)`, one per socket read, through an asyncio
    datagram transport whose socket the kernel timestamps (SIOCGSTAMPNS).
"""
