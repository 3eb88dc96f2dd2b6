"""A bad configuration stops startup with a message naming the file, the key and the problem."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from fleet_mcp_proxy.cli import default_advertise
from fleet_mcp_proxy.config import ConfigError, load_config, parse_env_arg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_documents_the_demo() -> None:
    config = load_config(ROOT / "examples" / "config.toml", environ={})
    assert [env.name for env in config.environments] == ["tracker"]
    assert config.host == "127.0.0.1"


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[proxy]\nidle_timeout = "soon"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.where == str(path)
    assert err.value.key == "proxy.idle_timeout"


def test_environment_with_both_command_and_url_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '[env.a]\ncommand = "x"\nurl = "http://127.0.0.1:1/mcp"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "env.a"
    assert "exactly one" in err.value.problem


def test_unknown_key_in_environment_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, '[env.a]\ncommand = "x"\ncomand = "typo"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "env.a.comand"


def test_invalid_alias_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '[env.Bad_Name]\ncommand = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key.startswith("env.Bad_Name")


def test_secrets_come_from_the_environment_and_stay_out_of_repr(tmp_path: Path) -> None:
    path = _write(tmp_path, '[env.s]\nurl = "http://127.0.0.1:9/mcp"\nheaders = { Authorization = "Bearer ${TOK}" }\n')
    config = load_config(path, environ={"TOK": "canary-secret-123"})
    assert config.environments[0].headers["Authorization"] == "Bearer canary-secret-123"
    assert "canary-secret-123" not in repr(config)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "TOK" in err.value.problem and err.value.key == "env.s.headers.Authorization"


def test_invalid_toml_and_missing_file_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[proxy\n"), environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_env_argument_is_a_url_or_a_shell_split_command() -> None:
    assert parse_env_arg("t=http://127.0.0.1:9000/mcp") == {"name": "t", "url": "http://127.0.0.1:9000/mcp"}
    assert parse_env_arg('f=npx -y "@scope/server x" /tmp') == {
        "name": "f",
        "command": ["npx", "-y", "@scope/server x", "/tmp"],
    }
    with pytest.raises(ConfigError):
        parse_env_arg("no-equals-sign")


def test_cli_exits_with_a_clear_message_on_a_bad_config(tmp_path: Path) -> None:
    path = _write(tmp_path, "[proxy]\nport = 99999\n")
    result = subprocess.run(
        [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}: proxy.port:" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_that_can_never_grade_an_abandoned_rollout_are_refused_naming_the_keys() -> None:
    fleet = {"api_key": "k" * 20, "ttl_seconds": 120}
    with pytest.raises(ConfigError) as refused:
        load_config(overrides={"fleet": fleet, "verify_timeout": 110}, environ={})
    assert "fleet.ttl_seconds" in str(refused.value) and "proxy.verify_timeout" in str(refused.value)
    web = {"name": "web", "fleet": "web", "ttl_seconds": 60}  # an environment's own TTL is held to it too
    with pytest.raises(ConfigError, match="env.web.ttl_seconds"):
        load_config(overrides={"fleet": {"api_key": "k" * 20}, "environments": [web]}, environ={})
    assert load_config(overrides={"fleet": {**fleet, "ttl_seconds": 200}, "verify_timeout": 110}, environ={})
    assert load_config(overrides={"verify_timeout": 5000}, environ={}), "no Fleet: no TTL to grade within"


@pytest.mark.parametrize("address", ["10.0.0.5:8000", "ftp://10.0.0.5", "http://", "http://h:99999", "http://h/?x=1"])
def test_cluster_advertise_must_be_an_http_url_and_names_its_key(tmp_path: Path, address: str) -> None:
    path = _write(tmp_path, f'[cluster]\nadvertise = "{address}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert (err.value.where, err.value.key) == (str(path), "cluster.advertise")


def test_cluster_advertise_is_kept_without_its_trailing_slash(tmp_path: Path) -> None:
    path = _write(tmp_path, '[cluster]\nadvertise = "http://${POD_IP}:8000/"\n')
    assert load_config(path, environ={"POD_IP": "10.0.0.5"}).cluster.advertise == "http://10.0.0.5:8000"


def test_the_default_advertised_address_is_where_the_replica_listens() -> None:
    assert default_advertise("10.0.0.5", 8000) == "http://10.0.0.5:8000"
    assert default_advertise("::1", 8001) == "http://[::1]:8001"
    assert default_advertise("0.0.0.0", 8000) == f"http://{socket.gethostname()}:8000"  # reachable, unlike 0.0.0.0
