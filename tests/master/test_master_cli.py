"""``aicdn-master``: user creation from stdin, bad settings stop start-up, and ``serve`` with
the embedded store (no AICDN_MONGO_URI) starting, answering and stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pymongo import MongoClient

from master_api.store import port_open
from tests.master.conftest import TEST_DB
from tests.master.helpers import free_low_port, http, wait_until

MASTER = [sys.executable, "-m", "master_api"]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICDN_")}
    env.update(values)
    return env


def test_user_create_reads_the_password_from_stdin(mongo_uri: str) -> None:
    MongoClient(mongo_uri).drop_database(TEST_DB)
    env = _env(
        AICDN_MONGO_URI=mongo_uri,
        AICDN_MONGO_DB=TEST_DB,
        AICDN_PASSWORD_MEMORY_KIB="8",
        AICDN_PASSWORD_TIME_COST="1",
        AICDN_PASSWORD_PARALLELISM="1",
    )
    command = [*MASTER, "user", "create", "ops", "--role", "operator", "--password-stdin"]
    done = subprocess.run(
        command, input="long enough password\n", env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "created operator ops" in done.stdout
    stored = MongoClient(mongo_uri)[TEST_DB]["users"].find_one({"_id": "ops"})
    assert stored is not None and stored["role"] == "operator"
    assert str(stored["password_hash"]).startswith("$argon2id$")
    again = subprocess.run(
        command, input="long enough password\n", env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    short = subprocess.run(
        [*MASTER, "user", "create", "x", "--role", "viewer", "--password-stdin"],
        input="short\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 1 and "at least 10" in short.stderr
    MongoClient(mongo_uri).drop_database(TEST_DB)


def test_a_bad_setting_stops_start_up_naming_it() -> None:
    done = subprocess.run(
        [*MASTER, "serve"],
        env=_env(AICDN_LEADER_TTL="forever"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("aicdn-master: AICDN_LEADER_TTL: bad duration")


def test_serve_with_the_embedded_store(tmp_path: Path) -> None:
    http_port, store_port = free_low_port(), free_low_port()
    env = _env(
        AICDN_DATA_DIR=str(tmp_path / "var"),
        AICDN_EMBEDDED_MONGO_PORT=str(store_port),
        AICDN_HTTP_ADDR=f"127.0.0.1:{http_port}",
        AICDN_GRPC_ADDR=f"127.0.0.1:{free_low_port()}",
        AICDN_LEADER_TTL="2s",
        AICDN_LEADER_RENEW_INTERVAL="0.5s",
    )
    log = (tmp_path / "master.log").open("w")
    proc = subprocess.Popen([*MASTER, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}/api/v1"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "master.log").read_text()
            try:
                return http("GET", f"{base}/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        assert (tmp_path / "var" / "mongo" / "aicdn.db").exists()
        assert (tmp_path / "var" / "jwt.secret").stat().st_mode & 0o777 == 0o600
        wait_until(lambda: http("GET", f"{base}/readyz").json()["leader"], timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not port_open("127.0.0.1", store_port), "embedded store left running"
        assert "aicdn-master stopped" in (tmp_path / "master.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
