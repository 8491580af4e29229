"""The web client's pages and static files, served with headers that keep tokens in the page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

WEB_CLIENT_DIR = Path(__file__).resolve().parents[2] / "web_client"
# The web client's pages by path; /join sends each invitee to the page of their role.
WEB_PAGES = {
    "/": "index.html",
    "/join": "join.html",
    "/queue": "queue.html",
    "/bedside": "bedside.html",
    "/expert": "expert.html",
    "/setup": "setup.html",
    "/quality": "quality.html",
}
# Pages load only their own scripts and talk only to this server; tokens travel in the URL
# fragment (never sent to a server) and must not leak through a Referer either.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:;"
        " connect-src 'self'; style-src 'self'; object-src 'none';"
        " base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def add_routes(app: web.Application) -> None:
    """The pages and /static/, when the web client is installed beside the server."""
    if WEB_CLIENT_DIR.is_dir():
        for path, page in WEB_PAGES.items():
            app.router.add_get(path, _page(page))
        app.router.add_static("/static/", WEB_CLIENT_DIR, show_index=False, follow_symlinks=False)


def _page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_CLIENT_DIR / name, headers=PAGE_HEADERS)

    return handler
