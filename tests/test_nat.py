"""Calls through real NATs: network namespaces, iptables NAT routers, a real coturn, and
engines as separate processes in "laptop" namespaces (tests/nattopo.py, tests/nat_agent.py).

Homes: 1 and 2 endpoint-independent NAT, 3 symmetric NAT, 4 drops unsolicited inbound UDP,
5 blocks UDP entirely. The service runs ``callkit serve`` over wss:// (a certificate made for
the test; the engines trust its CA with ``tls_ca_file``), handing out STUN and TURN (UDP and
TCP) with coturn shared-secret credentials. Every call asserts real decoded audio at every
end (the other side's tone within +-4 of its level) and the selected candidate pair's type.

Run alone: ``.venv/bin/python -m pytest -s tests/test_nat.py`` (as root; ``-s`` shows the
measured connect times and CPU costs; ``NAT_TALK=10`` measures CPU over 10 s of talk instead
of 2; ``NAT_DEBUG=1`` prints every agent's lines and keeps their logs in /tmp/nat-*.log).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .nattopo import SERVER_IP, Laptop, Topology, require_root, start_agent, sweep_leftovers
from .tlscerts import CertFiles, make_certs

pytestmark = pytest.mark.nat

SECRET = "nat-test-usersig-secret"
TURN_SECRET = "nat-test-turn-secret"
#: tone level per participant (dBFS) and the volume the others must measure (2*(level+60))
LEVELS = {0: -20.0, 1: -25.0, 2: -30.0}


@dataclass
class Net:
    topo: Topology
    certs: CertFiles
    url: str  # the real service
    url_bad_secret: str  # its TURN secret differs from coturn's
    url_expired: str  # hands out TURN credentials valid for 1 s

    def laptop(self, n: int) -> Laptop:
        return self.topo.laptops[n]

    def turn_pid(self) -> int:
        return self.topo.procs[0].pid


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    require_root()
    sweep_leftovers()
    workdir = tmp_path_factory.mktemp("nat")
    topo = Topology(workdir)
    try:
        topo.build_internet()
        for n, nat in enumerate(("eim", "eim", "symmetric", "restricted", "udp-blocked"), 1):
            topo.add_home(n, nat)
        certs = make_certs(workdir, [SERVER_IP])
        topo.start_coturn(TURN_SECRET)
        ice = [
            "--stun", f"stun:{SERVER_IP}:3478",
            "--turn", f"turn:{SERVER_IP}:3478?transport=udp",
            "--turn", f"turn:{SERVER_IP}:3478?transport=tcp",
            "--tls-cert", str(certs.cert),
            "--tls-key", str(certs.key),
        ]  # fmt: skip
        # secrets through the environment and a config file, as docs/deploy.md advises
        good_env = {"CALLKIT_SECRET_KEY": SECRET, "CALLKIT_TURN_SECRET": TURN_SECRET}
        conf = workdir / "bad.toml"
        conf.write_text(f'secret-key = "{SECRET}"\nturn-secret = "not-the-coturn-secret"\n')
        procs = [
            topo.start_serve(8443, good_env, *ice),
            topo.start_serve(8444, {}, "--config", str(conf), *ice),
            topo.start_serve(8445, good_env, *ice, "--turn-ttl", "1"),
        ]
        urls = [topo.serve_url(p) for p in procs]
        yield Net(topo, certs, *urls)
    finally:
        topo.close()
        if os.environ.get("NAT_DEBUG") and (workdir / "turnserver.log").exists():
            Path("/tmp/nat-turnserver.log").write_bytes((workdir / "turnserver.log").read_bytes())


async def run_call(
    net: Net,
    url: str,
    laptops: list[int],
    tag: str,
    *,
    extra: tuple[str, ...] = (),
    timeout: float = 40,
) -> dict[str, dict[str, Any]]:
    """Laptop ``laptops[0]`` calls the others (a group call when more than one); returns
    each agent's result by user id."""
    users = [f"{tag}u{i}" for i in range(len(laptops))]
    talk = os.environ.get("NAT_TALK", "2")  # seconds measured after connecting (CPU, volume)
    common = ["--url", url, "--secret", SECRET, "--ca", str(net.certs.ca), "--talk", talk, *extra]
    if os.environ.get("NAT_DEBUG"):
        common.append("-v")
    agents = []
    for i in range(1, len(laptops)):
        others = ",".join(u for u in users if u != users[i])
        agents.append(
            await start_agent(
                net.laptop(laptops[i]),
                *common,
                "--user",
                users[i],
                "--expect",
                others,
                "--level",
                str(LEVELS[i]),
                "--timeout",
                str(timeout - 5),
            )
        )
    for agent in agents:
        await agent.next("ready", 20)
    caller = await start_agent(
        net.laptop(laptops[0]), *common, "--user", users[0], "--call", ",".join(users[1:]),
        "--level", str(LEVELS[0]), "--timeout", str(timeout - 5),
    )  # fmt: skip
    agents.insert(0, caller)
    try:
        results = await asyncio.gather(*(a.next("result", timeout) for a in agents))
    finally:
        await asyncio.gather(*(a.finish() for a in agents))
        if os.environ.get("NAT_DEBUG"):
            for user, agent in zip(users, agents, strict=True):
                print(f"--- {user}:", *agent.raw, sep="\n  ")
                if agent.proc.stderr is not None:
                    Path(f"/tmp/nat-{user}.log").write_bytes(await agent.proc.stderr.read())
    return {users[i]: r["result"] for i, r in enumerate(results)}


def assert_heard(results: dict[str, dict[str, Any]]) -> None:
    """Everyone decoded everyone else's tone at its level (+-4) with no error."""
    users = list(results)
    for me, res in results.items():
        assert not res["errors"], (me, res)
        assert res["connect_s"] is not None, (me, res)
        for i, other in enumerate(users):
            if other != me:
                want = 2 * (LEVELS[i] + 60)
                got = res["volumes"][other]
                assert got is not None and abs(got - want) <= 4, (me, other, got, want, res)


def show(case: str, results: dict[str, dict[str, Any]]) -> None:
    for user, res in results.items():
        pairs = {u: p and (p["type"], p["rtt_ms"]) for u, p in (res.get("pairs") or {}).items()}
        print(
            f"[nat] {case} {user}: connect {res.get('connect_s')} s, pairs {pairs}, "
            f"cpu {res.get('cpu_s')} s over {res.get('wall_s')} s"
        )


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_case1_endpoint_independent_nats_connect_directly(net: Net) -> None:
    results = await run_call(net, net.url, [1, 2], "c1")
    show("case1 eim<->eim", results)
    print(results)
    assert_heard(results)
    for res in results.values():
        (pair,) = res["pairs"].values()
        assert pair is not None and pair["type"] != "relay", res  # direct (srflx / prflx)


async def test_case2_symmetric_vs_restricted_goes_through_coturn(net: Net) -> None:
    ticks0 = cpu_ticks(net.turn_pid())
    results = await run_call(net, net.url, [3, 4], "c2")
    ticks = cpu_ticks(net.turn_pid()) - ticks0
    show("case2 symmetric<->restricted", results)
    print(f"[nat] case2 coturn cpu {ticks / os.sysconf('SC_CLK_TCK'):.2f} s for the whole call")
    assert_heard(results)
    for res in results.values():
        (pair,) = res["pairs"].values()
        assert pair is not None and pair["type"] == "relay", res


async def test_case3_udp_blocked_connects_through_turn_over_tcp(net: Net) -> None:
    results = await run_call(net, net.url, [5, 1], "c3")
    show("case3 udp-blocked<->eim", results)
    assert_heard(results)
    blocked = results["c3u0"]["pairs"]["c3u1"]
    # no UDP leaves home 5: its end of the pair can only be the TCP-allocated relay
    assert blocked is not None and blocked["local_type"] == "relay", blocked


async def test_case4_group_call_across_mixed_nats(net: Net) -> None:
    results = await run_call(net, net.url, [2, 3, 4], "c4")
    show("case4 group eim/symmetric/restricted", results)
    assert_heard(results)
    for res in results.values():
        assert len(res["pairs"]) == 2 and all(p is not None for p in res["pairs"].values())
    # symmetric <-> restricted cannot be direct
    assert results["c4u1"]["pairs"]["c4u2"]["type"] == "relay"


async def test_case5_bad_turn_credentials_give_a_clear_error(net: Net) -> None:
    """A wrong TURN secret and expired TURN credentials (both calls at once, each needing
    the relay): a -1301 onError naming the TURN failure within the watchdog, never a hang."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    # --delay: the 1 s credentials expire first; a 3 s media watchdog instead of 10 s
    extra = ("--delay", "2", "--linger", "0.2", "--connect-timeout", "3")
    both = await asyncio.gather(
        run_call(net, net.url_bad_secret, [3, 4], "c5b", extra=extra, timeout=30),
        run_call(net, net.url_expired, [3, 4], "c5e", extra=extra, timeout=30),
    )
    took = loop.time() - started
    for which, results in zip(("bad_secret", "expired"), both, strict=True):
        show(f"case5 {which}", results)
        errors = [e for res in results.values() for e in res["errors"]]
        assert errors, (which, results)
        assert all(e["code"] == -1301 for e in errors), (which, errors)
        assert any("TURN allocation failed: 401" in e["msg"] for e in errors), (which, errors)
        assert all(res["connect_s"] is None for res in results.values()), (which, results)
    assert took < 30, took


async def test_case6_untrusted_certificate_is_refused_clearly(net: Net) -> None:
    agent = await start_agent(
        net.laptop(1), "--url", net.url, "--secret", SECRET, "--user", "c6u0", "--expect", "x"
    )
    res = (await agent.next("result", 20))["result"]
    await agent.finish()
    (err,) = res["errors"]
    assert err["code"] == -1405 and "certificate" in err["msg"], err
    assert net.url.startswith(f"wss://{SERVER_IP}:")


def test_not_root_fails_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="run them as root"):
        require_root()
