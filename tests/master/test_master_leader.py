"""Leader election: one master leads; when it dies, another leads within the lease TTL; a
clean stop (SIGTERM) hands the lease over at once. In-process electors and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from pymongo import MongoClient

from master_api.extensions import repos, settings
from master_api.leader import LEASE_NAME, BackgroundWorker, LeaderElector
from tests.master.helpers import free_low_port, http, wait_until


def test_one_elector_leads_and_another_takes_over_after_the_ttl(app: Flask) -> None:
    with app.app_context():
        first = LeaderElector(repos(), settings(), "a:1")
        second = LeaderElector(repos(), settings(), "b:1")
    assert first.tick() is True
    assert second.tick() is False
    assert first.is_leader and not second.is_leader
    assert first.tick() is True  # renewal
    # The first stops renewing (a crash): the second leads once the lease has run out.
    ttl = settings(app).leader_ttl
    took = wait_until(second.tick, timeout=ttl + 1.0, interval=0.1)
    assert took <= ttl + 0.5
    assert first.tick() is False and not first.is_leader


def test_clean_stop_releases_the_lease(app: Flask) -> None:
    with app.app_context():
        first = LeaderElector(repos(), settings(), "a:1")
        second = LeaderElector(repos(), settings(), "b:1")
    assert first.tick()
    first.stop(release=True)
    assert second.tick() is True


def test_only_the_leader_runs_background_jobs(app: Flask) -> None:
    runs: list[str] = []
    with app.app_context():
        elector = LeaderElector(repos(), settings(), "a:1")
    worker = BackgroundWorker(lambda: elector.is_leader, [("job", lambda: runs.append("x"))], 1.0)
    worker.run_once()
    assert runs == []
    elector.tick()
    worker.run_once()
    assert runs == ["x"]


class Master:
    """``python -m master_api serve`` on its own port, sharing the test database server."""

    def __init__(self, mongo_uri: str, db: str, log: Path) -> None:
        self.port = free_low_port()
        env = {
            **os.environ,
            "AICDN_MONGO_URI": mongo_uri,
            "AICDN_MONGO_DB": db,
            "AICDN_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "AICDN_GRPC_ADDR": f"127.0.0.1:{free_low_port()}",  # two masters: two gRPC ports
            "AICDN_JWT_SECRET": "s" * 48,
            "AICDN_LEADER_TTL": "2s",
            "AICDN_LEADER_RENEW_INTERVAL": "0.4s",
            "AICDN_HTTP_THREADS": "2",
            "AICDN_LOG_LEVEL": "info",
        }
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "master_api", "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.healthy, timeout=20, interval=0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"master exited with {self.proc.returncode}")
        try:
            return http("GET", f"{self.url}/healthz", timeout=1).status == 200
        except OSError:
            return False

    def leading(self) -> bool:
        metrics = http("GET", f"{self.url}/metrics", timeout=2).body.decode()
        return "aicdn_master_leader 1.0" in metrics

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def masters(mongo_uri: str, tmp_path: Path) -> Iterator[list[Master]]:
    db = "aicdn_failover"
    MongoClient(mongo_uri).drop_database(db)
    started: list[Master] = []
    try:
        started.append(Master(mongo_uri, db, tmp_path / "a.log"))
        started.append(Master(mongo_uri, db, tmp_path / "b.log"))
        yield started
    finally:
        for master in started:
            master.stop()
        MongoClient(mongo_uri).drop_database(db)


def _holder_pid(mongo_uri: str) -> int | None:
    lease = MongoClient(mongo_uri)["aicdn_failover"]["leaders"].find_one({"_id": LEASE_NAME})
    if lease is None or lease["expires_at"] < time.time():
        return None
    return int(str(lease["holder"]).split(":")[1])


def test_two_master_processes_fail_over_within_the_ttl(
    masters: list[Master], mongo_uri: str
) -> None:
    a, b = masters
    wait_until(lambda: _holder_pid(mongo_uri) is not None, timeout=5)
    leader, follower = (a, b) if _holder_pid(mongo_uri) == a.proc.pid else (b, a)
    assert _holder_pid(mongo_uri) == leader.proc.pid
    wait_until(leader.leading, timeout=5)
    assert not follower.leading()

    leader.proc.send_signal(signal.SIGKILL)  # a crash: no release of the lease
    leader.proc.wait(10)
    took = wait_until(lambda: _holder_pid(mongo_uri) == follower.proc.pid, timeout=6, interval=0.1)
    assert took <= 2.0 + 0.4 + 0.5, f"failover took {took:.2f}s"
    wait_until(follower.leading, timeout=2)

    # A clean stop: exit status 0 and the lease is handed back at once.
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.proc.wait(15) == 0
    lease = MongoClient(mongo_uri)["aicdn_failover"]["leaders"].find_one({"_id": LEASE_NAME})
    assert lease is not None and lease["expires_at"] == 0.0
