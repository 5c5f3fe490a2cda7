"""``callkit serve`` configuration: CLI / environment / TOML, validation, TLS, ICE servers."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from callkit import serveconfig
from callkit.serveconfig import ConfigError, ServeConfig
from callkit.signaling import SignalingServer
from callkit.signaling.ice import IceServersConfig, check_ice_url, turn_credentials
from callkit.signaling.usersig import gen_user_sig

from .tlscerts import make_certs

SDK = 1400000001
SECRET = "serveconfig-secret"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serveconfig.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    cfg = serveconfig.load(parse(), environ={})
    assert cfg == ServeConfig()
    assert (cfg.host, cfg.port, cfg.turn_ttl, cfg.tls) == ("127.0.0.1", 8765, 86400.0, False)
    assert cfg.ssl_context() is None


def test_precedence_cli_then_env_then_file(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text(
        'host = "0.0.0.0"\nport = 9000\nsecret-key = "from-file"\n'
        'stun = ["stun:198.51.100.1:3478"]\nturn_ttl = 60\n'
    )
    env = {"CALLKIT_PORT": "9001", "CALLKIT_SECRET_KEY": "from-env"}
    cfg = serveconfig.load(parse("--config", str(conf), "--port", "9002"), environ=env)
    assert cfg.port == 9002  # command line wins
    assert cfg.secret_key == "from-env"  # then the environment
    assert cfg.host == "0.0.0.0" and cfg.turn_ttl == 60.0  # then the file
    assert cfg.stun == ["stun:198.51.100.1:3478"]
    # the file may also be named in the environment
    cfg = serveconfig.load(parse(), environ={"CALLKIT_CONFIG": str(conf)})
    assert cfg.port == 9000 and cfg.secret_key == "from-file"


def test_lists_from_env_and_repeated_options() -> None:
    env = {
        "CALLKIT_TURN": "turn:198.51.100.1:3478?transport=udp, turns:turn.example.com:5349",
        "CALLKIT_TURN_SECRET": "s",
    }
    cfg = serveconfig.load(parse(), environ=env)
    assert cfg.turn == ["turn:198.51.100.1:3478?transport=udp", "turns:turn.example.com:5349"]
    cfg = serveconfig.load(parse("--stun", "stun:a.example", "--stun", "stun:b.example"), {})
    assert cfg.stun == ["stun:a.example", "stun:b.example"]


def test_redis_and_node_id_from_cli_and_env() -> None:
    cfg = serveconfig.load(parse("--redis", "redis://127.0.0.1:6379/0", "--node-id", "n-1"), {})
    assert (cfg.redis, cfg.node_id) == ("redis://127.0.0.1:6379/0", "n-1")
    cfg = serveconfig.load(parse(), {"CALLKIT_REDIS": "redis://h:1/2"})
    assert (cfg.redis, cfg.node_id) == ("redis://h:1/2", None)
    assert serveconfig.load(parse(), {}).redis is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "http"], {}, "port (command line): expected int, got 'http'"),
        ([], {"CALLKIT_PORT": "70000"}, "port: 70000 is not a TCP port (0-65535)"),
        ([], {"CALLKIT_TURN_TTL": "-5"}, "turn_ttl must be > 0 seconds, got -5.0"),
        (["--tls-cert", "c.pem"], {}, "tls_cert and tls_key: give both or neither"),
        (["--turn", "turn:x.example"], {}, "--turn needs --turn-secret"),
        (["--stun", "http://x"], {}, "bad ICE server URL 'http://x'"),
        (["--stun", "turn:x"], {}, "scheme must be one of stun, stuns"),
        (["--stun", "stun:x?transport=tcp"], {}, "stun URLs take no ?transport"),
        (["--turn", "turn:x?transport=sctp", "--turn-secret", "s"], {}, "bad ICE server URL"),
        (["--secret-key", ""], {}, "secret_key: empty"),
        (["--redis", "127.0.0.1:6379"], {}, "redis: '127.0.0.1:6379' is not a redis://"),
        (["--node-id", "n1"], {}, "node_id: only means something with --redis"),
        (["--redis", "redis://r", "--node-id", "a b"], {}, "node_id: 'a b' is not 1-64 letters"),
    ],
)
def test_bad_values_are_one_line(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        serveconfig.load(parse(*argv), environ=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read"):
        serveconfig.load(parse("--config", str(missing)), environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        serveconfig.load(parse("--config", str(broken)), environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 3\n")
    with pytest.raises(ConfigError, match="unknown option 'prot'"):
        serveconfig.load(parse("--config", str(unknown)), environ={})
    typed = tmp_path / "typed.toml"
    typed.write_text('port = "eighty"\nstun = "stun:x"\n')
    with pytest.raises(ConfigError, match=r"port \(.*typed.toml\): expected int"):
        serveconfig.load(parse("--config", str(typed)), environ={})


def test_certificate_problems(tmp_path: Path) -> None:
    certs = make_certs(tmp_path, ["127.0.0.1"])
    good = serveconfig.load(parse("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)), {})
    assert isinstance(good.ssl_context(), ssl.SSLContext) and good.tls
    absent = ServeConfig(tls_cert=str(tmp_path / "absent.pem"), tls_key=str(certs.key))
    with pytest.raises(ConfigError, match="cannot read"):
        absent.ssl_context()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        ServeConfig(tls_cert=str(garbage), tls_key=str(certs.key)).ssl_context()
    # a key that does not match the certificate
    (tmp_path / "other").mkdir()
    other = make_certs(tmp_path / "other", ["a.example"])
    with pytest.raises(ConfigError, match="cannot load certificate"):
        ServeConfig(tls_cert=str(certs.cert), tls_key=str(other.key)).ssl_context()


def test_turn_credentials_match_coturn_scheme() -> None:
    # expected value from: printf '%s' '1700086400:alice' |
    #   openssl dgst -sha1 -hmac 'north-secret' -binary | base64
    username, password = turn_credentials("north-secret", "alice", 86400, 1700000000.7)
    assert (username, password) == ("1700086400:alice", "Nni2GlD6PVaoCP0Cx2DhLKDWjyY=")
    ice = IceServersConfig(
        stun=["stun:198.51.100.1:3478"],
        turn=["turn:198.51.100.1:3478?transport=udp", "turn:198.51.100.1:3478?transport=tcp"],
        turn_secret="north-secret",
        turn_ttl=86400,
    )
    assert ice.for_user("alice", 1700000000.0) == [
        {"urls": ["stun:198.51.100.1:3478"]},
        {
            "urls": [
                "turn:198.51.100.1:3478?transport=udp",
                "turn:198.51.100.1:3478?transport=tcp",
            ],
            "username": "1700086400:alice",
            "credential": "Nni2GlD6PVaoCP0Cx2DhLKDWjyY=",
        },
    ]
    assert IceServersConfig().for_user("alice", 0) == []
    assert check_ice_url("turns:[2001:db8::1]:5349?transport=tcp", ("turns",))


def test_help_shows_every_default_and_env_var() -> None:
    parser = argparse.ArgumentParser()
    serveconfig.add_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default:" in (action.help or ""), action.dest
            assert "env CALLKIT_" in (action.help or ""), action.dest


def _start_serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "callkit.cli", "serve", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _finish(_start_serve(*argv, env=env))


def test_cli_exit_2_with_one_line(tmp_path: Path) -> None:
    # the three refusals run at once (each is a process that imports callkit)
    bad_tls = _start_serve(
        "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "k.pem")
    )
    bad_turn = _start_serve(env={"CALLKIT_TURN": "turn:x.example"})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _serve("--port", str(port), "--secret-key", "k")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"callkit serve: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in lines[0].lower()

    res = _finish(bad_tls)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"callkit serve: cannot read {str(tmp_path / 'none.pem')!r} (tls_cert/tls_key)"
    ]
    res = _finish(bad_turn)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "callkit serve: --turn needs --turn-secret (coturn's static-auth-secret)"
    ]


async def test_login_reply_carries_fresh_turn_credentials() -> None:
    now = [1700000000.0]
    from callkit.signaling import ServerConfig

    server = SignalingServer(
        SDK,
        SECRET,
        ServerConfig(wall_clock=lambda: now[0]),
        ice_servers=IceServersConfig(
            stun=["stun:198.51.100.1"], turn=["turn:198.51.100.1"], turn_secret="t", turn_ttl=600
        ),
    )
    url = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            replies = []
            for _ in range(2):  # the second login is a re-init: fresh credentials
                async with http.ws_connect(url) as ws:
                    await ws.send_json(
                        {
                            "type": "login",
                            "v": 1,
                            "id": 1,
                            "sdkAppId": SDK,
                            "userId": "alice",
                            "userSig": gen_user_sig(SDK, SECRET, "alice", 10**9),
                        }
                    )
                    replies.append(json.loads((await ws.receive()).data)["data"]["iceServers"])
                now[0] += 100
    finally:
        await server.stop()
    first, second = replies
    assert first[0] == {"urls": ["stun:198.51.100.1"]}
    assert first[1]["username"] == "1700000600:alice"
    assert second[1]["username"] == "1700000700:alice"
    assert (first[1]["username"], first[1]["credential"]) == turn_credentials(
        "t", "alice", 600, 1700000000.0
    )


async def test_tls_server_serves_wss_and_https(tmp_path: Path) -> None:
    certs = make_certs(tmp_path, ["127.0.0.1"])
    cfg = ServeConfig(tls_cert=str(certs.cert), tls_key=str(certs.key))
    server = SignalingServer(SDK, SECRET, ssl_context=cfg.ssl_context())
    url = await server.start("127.0.0.1", 0)
    assert url.startswith("wss://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(certs.ca))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{server.port}/health", ssl=trust) as resp:
                assert resp.status == 200 and (await resp.json())["ok"] is True
            async with http.ws_connect(url, ssl=trust) as ws:
                await ws.send_json({"type": "ping", "v": 1, "id": 1})
                assert json.loads((await ws.receive()).data)["type"] in ("reply", "error")
            # a client that does not trust the CA is refused
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{server.port}/health")
    finally:
        await server.stop()
