"""Fixtures of the master tests: a real nx-27017 server for the session (or a real MongoDB via
``AICDN_TEST_MONGO_URI``), an app per test on a database dropped afterwards, and users of each
role with their tokens. No mocks (STYLE Q1, Q2)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient

from master_api import create_app
from master_api.extensions import StoreExtension, repos, services
from master_api.leader import DeploymentWorker, LeaderElector
from master_api.models import ROLES, User
from master_api.settings import Settings
from master_api.store import EmbeddedMongo
from tests.master.helpers import free_low_port

TEST_DB = "aicdn_test"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database server of the session: ``AICDN_TEST_MONGO_URI``, else our own nx-27017."""
    external = os.environ.get("AICDN_TEST_MONGO_URI")
    if external:
        yield external
        return
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongo"), free_low_port())
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


def base_settings(mongo_uri: str, **overrides: Any) -> Settings:
    """Settings for tests: cheap password hashing, a short lease, loopback admin access."""
    values: dict[str, Any] = {
        "mongo_uri": mongo_uri,
        "mongo_db": TEST_DB,
        "mongo_timeout": 1.0,
        "jwt_secret": "t" * 48,
        "password_time_cost": 1,
        "password_memory_kib": 8,
        "password_parallelism": 1,
        "leader_ttl": 2.0,
        "leader_renew_interval": 0.5,
        "heartbeat_interval": 1.0,
        "offline_after_missed": 3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(mongo_uri: str) -> Settings:
    return base_settings(mongo_uri)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """An app on a fresh database, dropped at teardown."""
    assert settings.mongo_uri is not None
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    store = StoreExtension.get(application)[0]
    store.client.drop_database(settings.mongo_db)
    store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Caller:
    """A logged-in user: ``call(method, path, json=...)`` sends its bearer token."""

    client: FlaskClient
    name: str
    role: str
    token: str
    refresh_token: str

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)


def make_user(app: Flask, name: str, role: str, password: str = PASSWORD) -> None:
    with app.app_context():
        now = time.time()
        repos().users.create(User(name, role, services().passwords.hash(password), now, now))  # type: ignore[arg-type]


def login(client: FlaskClient, name: str, role: str, password: str = PASSWORD) -> Caller:
    answer = client.post("/api/v1/auth/login", json={"username": name, "password": password})
    assert answer.status_code == 200, answer.json
    return Caller(client, name, role, answer.json["access_token"], answer.json["refresh_token"])


@pytest.fixture
def users(app: Flask, client: FlaskClient) -> dict[str, Caller]:
    """One logged-in caller per role: ``users["viewer"]``, ``["operator"]``, ``["admin"]``."""
    out: dict[str, Caller] = {}
    for role in ROLES:
        make_user(app, role, role)
        out[role] = login(client, role, role)
    return out


@pytest.fixture
def admin(users: dict[str, Caller]) -> Caller:
    return users["admin"]


@pytest.fixture
def operator(users: dict[str, Caller]) -> Caller:
    return users["operator"]


@pytest.fixture
def viewer(users: dict[str, Caller]) -> Caller:
    return users["viewer"]


def random_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


NODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "edge": {"port": 443},
    "core": {"port": 8443},
}


def register(caller: Caller, name: str, type_: str, region: str, **extra: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "type": type_,
        "region": region,
        "addr": f"{name}.example",
        **NODE_DEFAULTS[type_],
        **extra,
    }
    answer = caller.post("/api/v1/nodes", json=body)
    assert answer.status_code == 201, answer.json
    node: dict[str, Any] = answer.json
    return node


def draft(caller: Caller, node_type: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "node_type": node_type,
        "template": node_type,
        "params": {"edge_password": "s3cret-pass"},
        **extra,
    }
    answer = caller.post("/api/v1/configs", json=body)
    assert answer.status_code == 201, answer.json
    version: dict[str, Any] = answer.json
    return version


@pytest.fixture
def worker(app: Flask) -> Iterator[DeploymentWorker]:
    """This process leads (a real election on the test database) and runs deployments."""
    settings = app.config["AICDN_SETTINGS"]
    elector = LeaderElector(repos(app), settings, "test")
    assert elector.tick()
    elector.start()
    deployments = DeploymentWorker(
        lambda: elector.is_leader, repos(app), settings, elector.member_id
    )
    deployments.start()
    yield deployments
    deployments.stop()
    elector.stop()
