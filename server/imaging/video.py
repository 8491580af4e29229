"""Uploaded clips (MP4, WebM), decoded with PyAV one frame at a time (worker thread).

A phone's recording of the scanner's screen, or a clip a scanner exported, becomes a US
multi-frame key image like a live clip: each picture is masked as it comes (`pixels.build`).
Only the first video stream is read; sound is never decoded (a recording may hold a spoken
name). The stream's size and length are checked before its frames are decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np

from server import image_limits
from server.errors import BadRequest, PayloadTooLarge
from server.media.capture import RTP_VIDEO_CLOCK

# The containers taken, by upload Content-Type, and PyAV's name for each.
CONTAINERS = {"video/mp4": "mp4", "video/webm": "webm"}
# How each codec's lossy compression is declared in the DICOM object (by `writer`).
CODECS = {"h264": "video/h264", "hevc": "video/hevc", "vp8": "video/vp8", "vp9": "video/vp9"}


def codec_of(data: bytes, content_type: str) -> str:
    """The clip's video codec (as `writer` names codecs), or a clear `BadRequest`."""
    with _open(data, content_type) as container:
        return CODECS.get(_stream(container).codec_context.name, "video/other")


def pictures(data: bytes, content_type: str) -> Iterator[tuple[np.ndarray, int]]:
    """The clip's pictures as RGB arrays with 90 kHz timestamps, decoded one at a time."""
    with _open(data, content_type) as container:
        stream = _stream(container)
        stream.thread_type = "AUTO"
        count = 0
        size: tuple[int, int] | None = None
        try:
            for frame in container.decode(stream):
                count += 1
                if count > image_limits.FRAMES_MAX:
                    raise PayloadTooLarge(
                        f"the clip has more than {image_limits.FRAMES_MAX} frames; send a "
                        "shorter one",
                        code="image_too_large",
                    )
                problem = image_limits.size_problem(frame.width, frame.height)
                if problem is not None:
                    raise PayloadTooLarge(problem, code="image_too_large")
                # A mask is a place in the picture: a clip turned on playback, or one that
                # changes size, cannot be masked by it.
                if frame.rotation:
                    raise BadRequest(
                        "the clip is stored turned (a phone's rotation flag): send it as the "
                        "scanner exported it",
                        code="invalid_video",
                    )
                if size is None:
                    size = (frame.width, frame.height)
                elif (frame.width, frame.height) != size:
                    raise BadRequest(
                        "the clip changes size partway: it cannot be masked", code="invalid_video"
                    )
                seconds = float(frame.time) if frame.time is not None else count / 30.0
                yield frame.to_ndarray(format="rgb24"), round(seconds * RTP_VIDEO_CLOCK)
        except av.FFmpegError:
            raise BadRequest("the clip's video cannot be decoded", code="invalid_video") from None
        if count == 0:
            raise BadRequest("the clip holds no video frames", code="invalid_video")


def _open(data: bytes, content_type: str) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r", format=CONTAINERS[content_type])
    except (av.FFmpegError, ValueError, KeyError):
        raise BadRequest(
            f"the upload is not a readable {content_type.split('/')[1].upper()} file",
            code="invalid_video",
        ) from None


def _stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise BadRequest("the clip holds no video stream", code="invalid_video")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    problem = image_limits.size_problem(width or 1, height or 1, stream.frames or 1)
    if problem is not None:
        raise PayloadTooLarge(problem, code="image_too_large")
    return stream
