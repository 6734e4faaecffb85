"""The database connection, and the embedded MongoDB-wire-compatible server.

:class:`Store` is the process's one ``MongoClient`` (created with ``connect=False`` so forking
servers and tests can build apps freely, and with a short server-selection timeout so "store
down" becomes a 503 within ``Settings.mongo_timeout`` instead of hanging a worker for 30 s).

:class:`EmbeddedMongo` runs nx-27017 (see ``shared/mongo.md``) as a child process on loopback
with ``--data-dir``: the master's single-machine default and the test suite's server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

__all__ = ["EmbeddedMongo", "EmbeddedMongoError", "Store", "port_open"]

log = logging.getLogger(__name__)

Document = dict[str, Any]


class Store:
    """One ``MongoClient`` and the master's database. Only ``master_api.repos`` uses ``db``."""

    def __init__(self, uri: str, db_name: str, timeout: float) -> None:
        ms = max(1, int(timeout * 1000))
        self.uri = uri
        self.client: MongoClient[Document] = MongoClient(
            uri,
            connect=False,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=max(ms * 5, 10_000),
            appname="aicdn-master",
        )
        self.db: Database[Document] = self.client[db_name]

    def close(self) -> None:
        """Close the client's sockets; the object must not be used afterwards."""
        self.client.close()


class EmbeddedMongoError(RuntimeError):
    """The embedded store could not be started."""


class EmbeddedMongo:
    """nx-27017 as a child process: ``start()`` waits until it answers, ``stop()`` ends it.

    Data lives in ``data_dir`` (one SQLite file per database, durable across restarts); the
    log and pid files sit beside it. The process is stopped by the pid this object started,
    never by name.
    """

    def __init__(self, data_dir: str | os.PathLike[str], port: int, host: str = "127.0.0.1"):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The connection string for :class:`Store`."""
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nx-27017.log"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises :class:`EmbeddedMongoError` if the port is taken or the server does not come up
        within ``timeout`` seconds (the message points at its log file).
        """
        if self.process is not None:
            raise EmbeddedMongoError("embedded store already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_open(self.host, self.port):
            raise EmbeddedMongoError(
                f"port {self.host}:{self.port} is already in use; another master or store is "
                "running there (set AICDN_EMBEDDED_MONGO_PORT or AICDN_MONGO_URI)"
            )
        command = [
            sys.executable,
            "-c",
            "import sys; from nx_27017.nx_27017 import main; sys.argv[0] = 'nx-27017'; main()",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--log-file",
            str(self.log_file),
            "--pid-file",
            str(self.data_dir / "nx-27017.pid"),
        ]
        log.info(
            "starting embedded store on %s:%d (data in %s)", self.host, self.port, self.data_dir
        )
        # Its own session: a Ctrl-C in the master's terminal must not kill the store before the
        # master has finished with it; the master stops it explicitly.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise EmbeddedMongoError(
                    f"embedded store exited with status {code}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedMongoError(
                    f"embedded store did not listen within {timeout:g}s; see {self.log_file}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (SIGKILL after ``timeout``) and wait for it. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded store ignored SIGTERM for %gs; killing it", timeout)
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the server (tests of a crashed store). Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedMongo:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
