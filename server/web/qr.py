"""A join link as a QR code, for a phone or tablet at the bedside to scan: SVG, made here.

segno (pure Python, maintained) encodes; error correction M survives a screen's glare and a
smudged camera; the quiet zone of four modules is the standard's. The SVG goes into the JSON
answer that creates the link: a token never travels in a URL of a QR endpoint.
"""

from __future__ import annotations

import io

import segno


def qr_svg(text: str) -> str:
    """`text` as a standalone SVG QR code (black on white, sized by its container)."""
    code = segno.make(text, error="m", micro=False)
    out = io.BytesIO()
    code.save(
        out,
        kind="svg",
        xmldecl=False,
        svgns=True,
        omitsize=True,
        border=4,
        dark="#000",
        light="#fff",
        svgclass=None,
        lineclass=None,
        nl=False,
    )
    return out.getvalue().decode("ascii")
