"""The database goes away: the API answers 503 with a clear message (quickly), health and
metrics keep answering, and everything recovers when the database is back."""

from __future__ import annotations

import time
from pathlib import Path

from master_api import create_app
from master_api.extensions import StoreExtension
from master_api.store import EmbeddedMongo
from tests.master.conftest import base_settings, login, make_user
from tests.master.helpers import free_low_port


def test_store_down_gives_503_and_recovers(tmp_path: Path) -> None:
    store = EmbeddedMongo(tmp_path / "mongo", free_low_port())
    store.start()
    try:
        settings = base_settings(store.uri, mongo_timeout=0.5)
        app = create_app(settings)
        client = app.test_client()
        make_user(app, "op", "operator")
        caller = login(client, "op", "operator")
        node = caller.post(
            "/api/v1/nodes",
            json={"name": "edge-1", "type": "edge", "region": "hk", "addr": "e", "port": 443},
        )
        assert node.status_code == 201

        store.stop()
        started = time.monotonic()
        answer = caller.get("/api/v1/nodes")
        elapsed = time.monotonic() - started
        assert answer.status_code == 503
        assert answer.json["error"] == "store_unavailable"
        assert "database is unavailable" in answer.json["message"]
        assert elapsed < 3.0, f"503 took {elapsed:.1f}s"
        assert caller.post("/api/v1/configs/1/publish").status_code == 503
        assert client.get("/api/v1/readyz").status_code == 503
        assert client.get("/api/v1/healthz").status_code == 200
        metrics = client.get("/api/v1/metrics")
        assert metrics.status_code == 200
        assert b"aicdn_master_store_up 0.0" in metrics.data

        store.start()  # same port and data directory
        answer = caller.get("/api/v1/nodes")
        assert answer.status_code == 200, answer.json
        assert [n["name"] for n in answer.json["items"]] == ["edge-1"]  # data survived
        assert client.get("/api/v1/readyz").json["store"] == "ok"
        StoreExtension.get(app)[0].close()
    finally:
        store.stop()
