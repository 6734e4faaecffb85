"""The master's fixtures (a real nx-27017 store, an app per test, logged-in callers), shared
with tests/master for the master JSON fuzz test."""

from tests.master.conftest import admin, app, client, mongo_uri, settings, users

__all__ = ["admin", "app", "client", "mongo_uri", "settings", "users"]
