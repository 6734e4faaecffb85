"""The master control plane (DESIGN §4): a Flask REST API on MongoDB.

``create_app`` is a list of ``init_app`` calls (STYLE B3/L4)::

    from master_api import create_app
    from master_api.settings import Settings

    app = create_app(Settings.load())   # needs mongo_uri set (``aicdn-master serve`` starts the
                                        # embedded store and fills it in) and a jwt_secret
"""

from __future__ import annotations

import logging

from flask import Flask

from master_api import api, console, errors, extensions
from master_api.metrics import MasterMetrics
from master_api.settings import Settings, SettingsError

__all__ = ["create_app"]

__version__ = "0.1.0"

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app for ``settings`` (default: :meth:`Settings.load` from the environment).

    Connects lazily, then creates every index (so the database must answer: a
    ``StoreUnavailable`` propagates). Raises ``SettingsError`` when ``mongo_uri`` or
    ``jwt_secret`` is missing. Background work (leader election, monitor) is not started here:
    that is the server's job (``master_api.server``), so tests and tools get a passive app.
    """
    settings = settings or Settings.load()
    if settings.mongo_uri is None:
        raise SettingsError("AICDN_MONGO_URI: required here (serve starts the embedded store)")
    if settings.jwt_secret is None:
        raise SettingsError("AICDN_JWT_SECRET: required (at least 32 random characters)")
    app = Flask(__name__, static_folder=None)
    extensions.init_settings(app, settings)
    errors.init_app(app)
    extensions.store.init_app(app, settings, settings.mongo_uri)
    extensions.init_services(app)
    extensions.init_jwt(app)
    MasterMetrics().init_app(app, lambda: extensions.repos(app))
    api.init_app(app)
    console.init_app(app, settings.ui_dir)  # the web console at /ui, outside the API
    return app
