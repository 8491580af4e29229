"""How large an image may be, wherever it comes from: an upload, a prior, the live video.

Checked on what a file's header says, before a pixel is decoded, so that a small
file cannot make the server decode gigabytes. DICOM's Rows and Columns are 16-bit
(at most 65535); these bounds are well inside that.
"""

from __future__ import annotations

# Width and height of any picture (a 4K ultrasound display is 3840x2160).
SIDE_MAX_PIXELS = 4096
# Frames of a clip or a multi-frame prior (20 s at 30 fps).
FRAMES_MAX = 600
# What decoding one image (all of its frames, one at a time) may produce in all.
DECODED_BYTES_MAX = 1 << 30


def size_problem(width: int, height: int, frames: int = 1, bytes_per_pixel: int = 3) -> str | None:
    """Why an image of this size is refused (safe to show: sizes only), or None."""
    if width > SIDE_MAX_PIXELS or height > SIDE_MAX_PIXELS:
        return (
            f"the image is {width}x{height} pixels; at most "
            f"{SIDE_MAX_PIXELS}x{SIDE_MAX_PIXELS} is accepted"
        )
    if frames > FRAMES_MAX:
        return f"the image has {frames} frames; at most {FRAMES_MAX} are accepted"
    decoded = width * height * bytes_per_pixel * frames
    if decoded > DECODED_BYTES_MAX:
        return (
            f"the image would decode to {decoded >> 20} MiB; at most "
            f"{DECODED_BYTES_MAX >> 20} MiB is accepted"
        )
    return None
