"""Settings: strict parsing from the environment and a TOML file; a bad value names itself."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from master_api.settings import Settings, SettingsError


def test_defaults_follow_the_design() -> None:
    settings = Settings.load(environ={})
    assert str(settings.http_addr) == "0.0.0.0:8080"
    assert str(settings.grpc_addr) == "0.0.0.0:50051"
    assert settings.data_dir == "./var"
    assert settings.mongo_uri is None and settings.embedded
    assert settings.admin_allow == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    # seed §8.2 thresholds
    assert settings.alert_p99_latency_ms == 100.0
    assert settings.alert_error_rate == 0.01
    assert settings.alert_connection_ratio == 0.9
    assert settings.offline_after == 30.0


def test_environment_values_are_parsed() -> None:
    settings = Settings.load(
        environ={
            "AICDN_MONGO_URI": "mongodb://db1:27017,db2:27017/?replicaSet=rs0",
            "AICDN_HTTP_ADDR": "127.0.0.1:9000",
            "AICDN_ADMIN_ALLOW": "10.0.0.0/8, 192.168.1.0/24",
            "AICDN_LEADER_TTL": "30s",
            "AICDN_LEADER_RENEW_INTERVAL": "5s",
            "AICDN_LOGIN_MAX_PER_IP": "7",
            "AICDN_ALERT_WEBHOOK": "https://hooks.example/aicdn",
            "AICDN_TEST_MONGO_URI": "ignored: belongs to the test suite",
        }
    )
    assert settings.mongo_uri == "mongodb://db1:27017,db2:27017/?replicaSet=rs0"
    assert (settings.http_addr.host, settings.http_addr.port) == ("127.0.0.1", 9000)
    assert len(settings.admin_allow) == 2
    assert settings.leader_ttl == 30.0
    assert settings.login_max_per_ip == 7
    assert settings.alert_webhook == "https://hooks.example/aicdn"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AICDN_HTTP_ADDR", "localhost", "AICDN_HTTP_ADDR: bad address"),
        ("AICDN_LEADER_TTL", "soon", "AICDN_LEADER_TTL: bad duration"),
        ("AICDN_LOGIN_MAX_PER_IP", "1.5", "AICDN_LOGIN_MAX_PER_IP: expected an integer"),
        ("AICDN_LOGIN_MAX_PER_IP", "0", "AICDN_LOGIN_MAX_PER_IP: 0 is out of range"),
        ("AICDN_ADMIN_ALLOW", "10.0.0.0/33", "AICDN_ADMIN_ALLOW: bad CIDR"),
        ("AICDN_ADMIN_ALLOW", " , ", "AICDN_ADMIN_ALLOW: no CIDR given"),
        ("AICDN_MONGO_URI", "http://db", "AICDN_MONGO_URI: expected mongodb://"),
        ("AICDN_MONGO_DB", "a-b", "AICDN_MONGO_DB: bad database name"),
        ("AICDN_JWT_SECRET", "short", "AICDN_JWT_SECRET: too short"),
        ("AICDN_ALERT_ERROR_RATE", "2", "AICDN_ALERT_ERROR_RATE: 2 is out of range"),
        ("AICDN_LOG_LEVEL", "loud", "AICDN_LOG_LEVEL: expected one of"),
    ],
)
def test_a_bad_value_stops_start_up_naming_it(name: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={name: value})
    assert str(info.value).startswith(expected), str(info.value)


def test_renew_interval_must_fit_the_lease() -> None:
    with pytest.raises(SettingsError, match="AICDN_LEADER_RENEW_INTERVAL"):
        Settings.load(environ={"AICDN_LEADER_TTL": "4s", "AICDN_LEADER_RENEW_INTERVAL": "3s"})


def test_argon2_memory_must_cover_its_lanes() -> None:
    with pytest.raises(SettingsError, match="AICDN_PASSWORD_MEMORY_KIB"):
        Settings.load(environ={"AICDN_PASSWORD_MEMORY_KIB": "16"})  # 4 lanes need 32


def test_toml_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text('mongo_db = "fleet"\nhttp_threads = 4\nadmin_allow = ["10.1.0.0/16"]\n')
    settings = Settings.load(environ={"AICDN_CONFIG": str(path), "AICDN_HTTP_THREADS": "16"})
    assert settings.mongo_db == "fleet"
    assert settings.http_threads == 16  # the environment wins
    assert [str(n) for n in settings.admin_allow] == ["10.1.0.0/16"]


def test_unknown_file_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text('mongo_dbb = "fleet"\n')
    with pytest.raises(SettingsError, match="unknown setting 'mongo_dbb'"):
        Settings.load(environ={}, config_file=str(path))


def test_wrong_type_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text("http_threads = true\n")
    with pytest.raises(SettingsError, match="AICDN_HTTP_THREADS: expected an integer"):
        Settings.load(environ={}, config_file=str(path))
