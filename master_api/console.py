"""The web console (``web/``, Vue 3) served at ``/ui``: the built files of ``Settings.ui_dir``.

The console is not part of the REST API: it is a small WSGI app of its own, mounted in front
of the API app with werkzeug's ``DispatcherMiddleware``, so the API's route table (and the
OpenAPI document generated from it) stays exactly the API. The console talks to the API like
any other client (JWT bearer, ``/api/v1``); it has no server-side state.

The build (``make web``: ``npm ci && npm run build`` in ``web/``) is not committed. Without it,
``/ui`` answers 503 with a page that says how to build it, instead of a bare 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response, redirect, send_from_directory
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response as BaseResponse

__all__ = ["MOUNT", "NOT_BUILT", "console_app", "init_app"]

MOUNT = "/ui"

NOT_BUILT = (
    "The web console is not built. Run `make web` in the master's checkout "
    "(it runs `npm ci && npm run build` in web/), or point AICDN_UI_DIR at a built console."
)

# The built console loads only its own scripts and styles, and calls only this origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def console_app(ui_dir: str | Path) -> Flask:
    """The WSGI app that serves the built console in ``ui_dir`` (mounted at :data:`MOUNT`).

    ``index.html`` is never cached (it names the current hashed assets); files under
    ``assets/`` are immutable. The directory is looked at per request, so a console built
    after the master started is served without a restart.
    """
    root = Path(ui_dir)
    app = Flask("master_api.console", static_folder=None)
    app.after_request(_harden)

    def _index() -> Response:
        if not (root / "index.html").is_file():
            return Response(
                f"<!doctype html><title>AI CDN console</title><p>{NOT_BUILT}</p>\n",
                status=503,
                mimetype="text/html",
            )
        response = send_from_directory(root, "index.html", max_age=0)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/")
    def index() -> Response:
        return _index()

    @app.get("/<path:name>")
    def asset(name: str) -> Response:
        if not (root / "index.html").is_file():
            return _index()
        # send_from_directory refuses paths that leave root (404), as unknown files are.
        response = send_from_directory(root, name, max_age=0)
        if name.startswith("assets/"):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        text = "no such file in the web console" if isinstance(exc, NotFound) else exc.name
        return Response(f"{text}\n", status=status, mimetype="text/plain")

    return app


def init_app(app: Flask, ui_dir: str | Path) -> None:
    """Mount the console at ``/ui`` in front of ``app`` (``/ui`` itself redirects to ``/ui/``)."""
    console = console_app(ui_dir)
    dispatcher = DispatcherMiddleware(app.wsgi_app, {MOUNT: console.wsgi_app})

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == MOUNT:
            # Relative asset URLs need the trailing slash.
            target = MOUNT + "/"
            answer: BaseResponse = redirect(target, code=308)
            return answer(environ, start_response)
        return dispatcher(environ, start_response)

    app.wsgi_app = wsgi  # type: ignore[method-assign]
