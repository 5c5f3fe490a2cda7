"""A real network in Linux network namespaces: an "internet", homes behind NAT routers.

::

    [laptop N] eth0 172.31.N.2 --- lan 172.31.N.1 [router N] wan 198.51.100.(10+N) ---+
                                                                                      |
                                       br0 198.51.100.2 [internet]  (coturn, callkit serve)

Every namespace and veth pair is created here, with ``ip -n``, directly inside the
namespaces (nothing is ever created in, or linked to, the host's namespace); there is no
route out of 198.51.100.0/24 and 172.31.N.0/24 (the internet's default route goes into a veth
pair of its own, where everything is dropped). Routers NAT with iptables:

- ``eim``: MASQUERADE (endpoint-independent mapping, port-preserving);
- ``symmetric``: MASQUERADE --random-fully (a new random port per destination);
- ``restricted``: MASQUERADE and unsolicited inbound UDP dropped, forwarded or not;
- ``udp-blocked``: MASQUERADE and no UDP forwarded at all.

Every router drops unsolicited inbound UDP addressed to itself (its firewall), as home
routers do; Linux conntrack filters what MASQUERADE maps by address and port anyway.

:meth:`Topology.close` kills every process started here and deletes every namespace (and
so every veth and iptables rule), also after a failure. Needs root: :func:`require_root`
fails with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERNET = "198.51.100.0/24"
SERVER_IP = "198.51.100.2"
TURN_PORT = 3478
NAT_KINDS = ("eim", "symmetric", "restricted", "udp-blocked")
REPO = Path(__file__).resolve().parent.parent


def require_root() -> None:
    """Fail (not skip) with a clear message when namespaces cannot be made."""
    import pytest

    if os.geteuid() != 0:
        pytest.fail(
            "the NAT tests build network namespaces and iptables NAT rules: run them as root "
            "(CI does), e.g. sudo .venv/bin/python -m pytest tests/test_nat.py",
            pytrace=False,
        )
    for tool in ("ip", "iptables", "turnserver"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"the NAT tests need {tool!r} (Debian packages iproute2, iptables, coturn: "
                "`make deb` installs them)",
                pytrace=False,
            )


def sweep_leftovers() -> list[str]:
    """Delete namespaces a killed earlier run left (``cknat<pid>x...``, that pid gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    removed = []
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^cknat(\d+)x[0-9a-f]{4}-", name)
        if m and not Path(f"/proc/{m[1]}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
            removed.append(name)
    return removed


def _sh(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")


@dataclass
class Laptop:
    """A laptop namespace behind home ``n``'s router."""

    ns: str
    n: int
    nat: str

    @property
    def ip(self) -> str:
        return f"172.31.{self.n}.2"


@dataclass
class Topology:
    """Namespaces, processes and files of one NAT test network (see the module docstring)."""

    workdir: Path
    prefix: str = field(
        default_factory=lambda: (
            os.environ.get("NAT_PREFIX") or f"cknat{os.getpid()}x{secrets.token_hex(2)}-"
        )
    )
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    laptops: dict[int, Laptop] = field(default_factory=dict)

    # ---------------------------------------------------------------- building
    @property
    def internet(self) -> str:
        return self.prefix + "inet"

    def _add_ns(self, name: str) -> str:
        ns = self.prefix + name
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def build_internet(self) -> None:
        ns = self._add_ns("inet")
        _sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", ns, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        _sh("ip", "-n", ns, "link", "set", "br0", "up")
        # a default route into a veth pair whose both ends are in this namespace, towards a
        # MAC nobody has (packets sent there are dropped): what a server on the internet does
        # with a packet for a private address a client advertised. Without it coturn's relay
        # gets ENETUNREACH sending to such a peer and closes the whole allocation (the client
        # then sees 438 "Wrong nonce" and 400 on a session that no longer has an allocation).
        _sh("ip", "-n", ns, "link", "add", "void0", "type", "veth", "peer", "name", "void1")
        for dev in ("void0", "void1"):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", ns, "neigh", "add", "198.51.100.254", "lladdr", "02:00:00:00:00:fe",
            "dev", "void0", "nud", "permanent")  # fmt: skip
        _sh("ip", "-n", ns, "route", "add", "default", "via", "198.51.100.254", "dev", "void0",
            "onlink")  # fmt: skip

    def add_home(self, n: int, nat: str) -> Laptop:
        """Router ``rN`` (WAN 198.51.100.(10+N), NAT ``nat``) and laptop ``hN`` behind it."""
        if nat not in NAT_KINDS:
            raise ValueError(f"unknown NAT kind {nat!r}")
        router, laptop = self._add_ns(f"r{n}"), self._add_ns(f"h{n}")
        inet = self.internet
        _sh("ip", "-n", inet, "link", "add", f"w{n}", "type", "veth", "peer", "name", "wan",
            "netns", router)  # fmt: skip
        _sh("ip", "-n", inet, "link", "set", f"w{n}", "master", "br0", "up")
        _sh("ip", "-n", router, "addr", "add", f"198.51.100.{10 + n}/24", "dev", "wan")
        _sh("ip", "-n", router, "link", "set", "wan", "up")
        _sh("ip", "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", laptop)  # fmt: skip
        _sh("ip", "-n", router, "addr", "add", f"172.31.{n}.1/24", "dev", "lan")
        _sh("ip", "-n", router, "link", "set", "lan", "up")
        _sh("ip", "-n", laptop, "addr", "add", f"172.31.{n}.2/24", "dev", "eth0")
        _sh("ip", "-n", laptop, "link", "set", "eth0", "up")
        _sh("ip", "-n", laptop, "route", "add", "default", "via", f"172.31.{n}.1")
        _sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt = ("ip", "netns", "exec", router, "iptables")
        masq = [*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        _sh(*masq, *(["--random-fully"] if nat == "symmetric" else []))
        # the router's own firewall: unsolicited inbound UDP is dropped before it can create
        # conntrack state (else a peer's early packet to our mapped port takes that port's
        # tuple and MASQUERADE picks another port for our next packet to that peer)
        chains = ("INPUT", "FORWARD") if nat == "restricted" else ("INPUT",)
        for chain in chains:
            _sh(*ipt, "-A", chain, "-i", "wan", "-p", "udp", "-m", "conntrack",
                "--ctstate", "NEW", "-j", "DROP")  # fmt: skip
        if nat == "udp-blocked":
            _sh(*ipt, "-A", "FORWARD", "-p", "udp", "-j", "DROP")
        self.laptops[n] = Laptop(laptop, n, nat)
        return self.laptops[n]

    # ---------------------------------------------------------------- services
    def start_coturn(self, secret: str) -> subprocess.Popen[str]:
        """coturn on 198.51.100.2:3478 (UDP and TCP), shared-secret auth; waits until ready."""
        conf = self.workdir / "turnserver.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listening-ip={SERVER_IP}",
                    f"relay-ip={SERVER_IP}",
                    f"listening-port={TURN_PORT}",
                    "min-port=49152",
                    "max-port=49400",
                    "use-auth-secret",
                    f"static-auth-secret={secret}",
                    "realm=callkit.test",
                    "fingerprint",
                    # a short nonce lifetime: every ChannelBind after 3 s meets a 438
                    "stale-nonce=3",
                    "no-cli",
                    "no-tls",
                    "no-dtls",
                    "no-multicast-peers",
                    f"userdb={self.workdir / 'turndb'}",
                    f"pidfile={self.workdir / 'turnserver.pid'}",
                    f"log-file={self.workdir / 'turnserver.log'}",
                    "no-stdout-log",
                    "simple-log",
                    "verbose",
                    "",
                ]
            )
        )
        proc = self.spawn(self.internet, ["turnserver", "-c", str(conf)], quiet=True)
        self._wait_for_port(SERVER_IP, TURN_PORT)
        return proc

    def start_serve(self, port: int, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        """Start ``callkit serve`` in the internet namespace (see :meth:`serve_url`)."""
        return self.spawn(
            self.internet,
            [sys.executable, "-m", "callkit.cli", "serve", "--host", SERVER_IP,
             "--port", str(port), *args],
            env=env,
        )  # fmt: skip

    @staticmethod
    def serve_url(proc: subprocess.Popen[str]) -> str:
        """The URL a started ``callkit serve`` prints once it listens."""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "callkit signaling on" not in line:
            err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
            raise RuntimeError(f"callkit serve did not start: {line!r} {err}")
        return line.split(" on ")[1].split()[0]

    def _wait_for_port(self, host: str, port: int) -> None:
        probe = (
            "import socket,time\n"
            "for _ in range(100):\n"
            "    s=socket.socket()\n"
            "    try:\n"
            f"        s.connect(('{host}',{port})); break\n"
            "    except OSError: time.sleep(0.05)\n"
            "    finally: s.close()\n"
            "else: raise SystemExit('port never opened')\n"
        )
        _sh("ip", "netns", "exec", self.internet, sys.executable, "-c", probe)

    def spawn(
        self,
        ns: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> subprocess.Popen[str]:
        """Start ``cmd`` in namespace ``ns`` (killed by :meth:`close`)."""
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=full_env,
            cwd=str(REPO),
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        """Kill every process started here, delete every namespace made here."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces.clear()


@dataclass
class AgentRun:
    """One nat_agent.py process: its JSON lines as they come."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    async def next(self, key: str, timeout: float) -> dict[str, Any]:
        """The next JSON line that has ``key``; fails with what was seen on timeout."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {key!r} within {timeout} s; saw {self.raw[-20:]}")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                continue
            if not raw:
                err = b""
                if self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                raise AssertionError(
                    f"agent exited before {key!r}; saw {self.raw[-20:]}; stderr:\n"
                    + err.decode()[-3000:]
                )
            text = raw.decode().strip()
            self.raw.append(text)
            try:
                obj = json.loads(text)
            except ValueError:
                continue
            self.lines.append(obj)
            if key in obj:
                return obj

    async def finish(self, timeout: float = 10) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def start_agent(laptop: Laptop, *args: str) -> AgentRun:
    """Run tests/nat_agent.py in ``laptop``'s namespace."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", laptop.ns, sys.executable, str(REPO / "tests" / "nat_agent.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
    )  # fmt: skip
    return AgentRun(proc)
