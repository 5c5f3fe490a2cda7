"""Signaling throughput of one node and of a cluster: call setups per second and p99
request-to-reply with 1,000 connected clients, for one in-memory node, one Redis-backed node
and three Redis-backed nodes (separate ``callkit serve`` processes, tests/cluster.py), in one
run. Signaling only (no media).

    .venv/bin/python bench/bench_cluster.py [--clients 1000] [--seconds 5] [--rate 200]

The clients (half callers, half callees; with three nodes each pair's two users sit on
different nodes, so every call crosses nodes) are spread over ``--workers`` load processes
that speak the wire protocol by hand. Each pair runs call -> accept -> hangup cycles; a cycle
counts as a call setup when its accept is answered. Two phases per configuration:

- paced: ``--rate`` setups per second in all (started on a fixed schedule, so a slow server
  does not lower the offered load), for the p99 request-to-reply of every call / accept /
  hangup at a load every configuration carries;
- flat out: every pair cycles back to back, for the most setups per second.

Each phase runs ``--seconds``; an accept answered after it is not counted (each request and
each awaited event times out after 10 s, so the run is bounded). A cycle that failed hangs up
what is left of its call. Prints one line per configuration (with the most common errors; a
paced start while every pair is still busy counts as one) and the ratio of three nodes to one
Redis node and to one in-memory node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from callkit.signaling.usersig import gen_user_sig
from callkit.testing import SDK_APP_ID, SECRET_KEY

REQUEST_TIMEOUT = 10.0
#: the events a cycle waits for (the others are read and dropped)
WAITED = ("onCallReceived", "onCallEnd")


# ---------------------------------------------------------------------------- load worker


class Client:
    """One logged-in WebSocket: requests with replies, events by (name, callId)."""

    def __init__(self, user: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.user = user
        self.ws = ws
        self.next_id = 1
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame["type"] in ("ok", "error"):
                future = self.replies.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(frame)
            elif frame["type"] == "event" and frame["event"] in WAITED:
                future = self.event(frame["event"], frame["callId"])
                if not future.done():
                    future.set_result(frame)

    def event(self, name: str, call_id: str) -> asyncio.Future[dict[str, Any]]:
        """The future of event ``name`` of call ``call_id``, made by whichever of the reader
        and the waiter comes first (so an event that arrived before the wait is kept)."""
        key = (name, call_id)
        future = self.events.get(key)
        if future is None:
            future = self.events[key] = asyncio.get_running_loop().create_future()
        return future

    async def wait_event(self, name: str, call_id: str) -> None:
        try:
            await asyncio.wait_for(self.event(name, call_id), REQUEST_TIMEOUT)
        finally:
            self.events.pop((name, call_id), None)

    async def request(self, type_: str, lat: list[float], **fields: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.replies[rid] = future
        t = time.perf_counter()
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": rid, **fields}))
        try:
            frame = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            self.replies.pop(rid, None)
        lat.append(time.perf_counter() - t)
        if frame["type"] != "ok":
            raise RuntimeError(f"{type_}: {frame.get('code')} {frame.get('message')}")
        return dict(frame["data"])


async def log_in(http: aiohttp.ClientSession, url: str, user: str) -> Client:
    ws = await http.ws_connect(url, autoping=True)
    client = Client(user, ws)
    sig = gen_user_sig(SDK_APP_ID, SECRET_KEY, user, 3600)
    await client.request("login", [], sdkAppId=SDK_APP_ID, userId=user, userSig=sig)
    return client


async def cycle(a: Client, b: Client, lat: list[float], on_setup: Callable[[], None]) -> None:
    """One call -> accept -> hangup (``on_setup()`` once the accept is answered). On an error
    both users hang up what is left of the call, so the pair can go on."""
    call_id = None
    try:
        data = await a.request(
            "call", lat, callees=[b.user], mediaType=1, groupId="", timeout=30.0, userData=""
        )
        call_id = data["call"]["callId"]
        await b.wait_event("onCallReceived", call_id)
        await b.request("accept", lat, callId=call_id)
        on_setup()
        await a.request("hangup", lat, callId=call_id)
        await asyncio.gather(a.wait_event("onCallEnd", call_id), b.wait_event("onCallEnd", call_id))
    except BaseException:
        if call_id is not None:
            for user in (a, b):
                with contextlib.suppress(Exception):
                    await user.request("hangup", [], callId=call_id)
        raise


#: why a pair stopped for good: the server closed one of its sockets (a lost link)
LOST = "a socket was closed by the server: this pair stopped"


def closed(pair: tuple[Client, Client]) -> bool:
    """Whether either socket of ``pair`` is closed."""
    return pair[0].ws.closed or pair[1].ws.closed


async def run_phase(
    pairs: list[tuple[Client, Client]], seconds: float, rate: float | None
) -> dict[str, Any]:
    """Cycles for ``seconds``: paced at ``rate`` setups/s over these pairs, or flat out."""
    lat: list[float] = []
    setups = errors = 0
    why: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    def setup() -> None:
        nonlocal setups
        if loop.time() <= end:
            setups += 1

    async def one(pair: tuple[Client, Client]) -> None:
        nonlocal errors
        if closed(pair):
            return
        try:
            await cycle(*pair, lat, setup)
        except (RuntimeError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            errors += 1
            why[(str(exc) or type(exc).__name__)[:160]] += 1
        if closed(pair):  # counted once: the pair stops (no spinning on a dead socket)
            errors += 1
            why[LOST] += 1

    if rate is None:

        async def back_to_back(pair: tuple[Client, Client]) -> None:
            while loop.time() < end and not closed(pair):
                await one(pair)

        await asyncio.gather(*(back_to_back(p) for p in pairs))
    else:
        idle = list(pairs)
        tasks: set[asyncio.Task[None]] = set()

        async def paced(pair: tuple[Client, Client]) -> None:
            try:
                await one(pair)
            finally:
                if not closed(pair):
                    idle.append(pair)

        start, n = loop.time(), 0
        while loop.time() < end:
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            if not idle:
                errors += 1  # every pair busy: the server is behind the offered rate
                why["not started: every pair still busy (the service is behind the rate)"] += 1
                continue
            task = asyncio.create_task(paced(idle.pop(0)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return {"setups": setups, "errors": errors, "latencies": lat, "why": dict(why)}


async def worker(spec: dict[str, Any]) -> None:
    """Log in this worker's pairs, then run the phases the parent asks for on stdin."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    pairs = []
    for caller, callee in spec["pairs"]:
        a = await log_in(http, caller["url"], caller["user"])
        b = await log_in(http, callee["url"], callee["user"])
        pairs.append((a, b))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "quit":
            break
        seconds, rate = json.loads(line)
        result = await run_phase(pairs, seconds, rate)
        print(json.dumps(result), flush=True)
    for a, b in pairs:
        await a.ws.close()
        await b.ws.close()
    await http.close()


# ---------------------------------------------------------------------------- parent


def p99_ms(latencies: Sequence[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` used so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


async def measure(
    urls: list[str], args: argparse.Namespace, servers: Sequence[int]
) -> dict[str, Any]:
    """Both phases against nodes ``urls``; returns paced p99 and flat-out setups/s, and the
    CPU seconds the ``servers`` (node and Redis pids) and the load processes used flat out."""
    n_pairs = args.clients // 2
    pairs = []
    for i in range(n_pairs):
        caller = {"url": urls[i % len(urls)], "user": f"a{i}"}
        callee = {"url": urls[(i + 1) % len(urls)], "user": f"b{i}"}
        pairs.append((caller, callee))
    procs = []
    for w in range(args.workers):
        spec = json.dumps({"pairs": pairs[w :: args.workers]})
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                spec,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    try:

        async def line(proc: asyncio.subprocess.Process) -> str:
            assert proc.stdout is not None
            text = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            if not text:
                raise RuntimeError("a load worker died (see its stderr above)")
            return text

        for proc in procs:
            assert (await line(proc)).strip() == "ready"
        results = {}
        for phase, rate in (("paced", args.rate / args.workers), ("flat", None)):
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write((json.dumps([args.seconds, rate]) + "\n").encode())
                await proc.stdin.drain()
            cpu0 = cpu_s(servers), cpu_s([p.pid for p in procs])
            outs = [json.loads(await line(proc)) for proc in procs]
            cpu = cpu_s(servers) - cpu0[0], cpu_s([p.pid for p in procs]) - cpu0[1]
            lat = [x for o in outs for x in o["latencies"]]
            results[phase] = {
                "setups_per_s": sum(o["setups"] for o in outs) / args.seconds,
                "p99_ms": p99_ms(lat),
                "errors": sum(o["errors"] for o in outs),
                "why": sum((Counter(o["why"]) for o in outs), Counter()).most_common(3),
                "cpu": cpu,
            }
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return {
        "paced_p99_ms": results["paced"]["p99_ms"],
        "paced_setups_per_s": results["paced"]["setups_per_s"],
        "paced_errors": results["paced"]["errors"],
        "setups_per_s": results["flat"]["setups_per_s"],
        "flat_p99_ms": results["flat"]["p99_ms"],
        "flat_errors": results["flat"]["errors"],
        "why": results["paced"]["why"] + results["flat"]["why"],
        "server_cpu_s": results["flat"]["cpu"][0],
        "load_cpu_s": results["flat"]["cpu"][1],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000, help="connected clients (pairs x 2)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument("--rate", type=float, default=200.0, help="paced phase: setups/s in all")
    ap.add_argument("--workers", type=int, default=2, help="load generator processes")
    ap.add_argument(
        "--configs",
        default="memory,redis1,redis3",
        help="which configurations: memory (1 node), redis1 (1 node), redis3 (3 nodes)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients)), hard))
    if args.worker:
        await worker(json.loads(args.worker))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's tests/
    from tests.cluster import Cluster

    print(
        f"{args.clients} clients, {args.workers} load processes, phases of {args.seconds:.0f} s, "
        f"paced at {args.rate:.0f} setups/s; {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    figures: dict[str, dict[str, Any]] = {}
    configs = {
        "memory": ("1 node, in memory", 1, False),
        "redis1": ("1 node, Redis", 1, True),
        "redis3": ("3 nodes, Redis", 3, True),
    }
    for key in args.configs.split(","):
        name, nodes, redis = configs[key]
        async with Cluster(nodes=nodes, redis=redis) as cluster:
            pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            if cluster.redis is not None and cluster.redis.proc is not None:
                pids.append(cluster.redis.proc.pid)
            f = figures[key] = await measure(cluster.urls, args, pids)
        print(
            f"{name:18}: {f['setups_per_s']:7.0f} call setups/s flat out "
            f"(p99 {f['flat_p99_ms']:.0f} ms, {f['flat_errors']} errors); "
            f"p99 request-to-reply {f['paced_p99_ms']:.1f} ms at "
            f"{f['paced_setups_per_s']:.0f} setups/s ({f['paced_errors']} errors); flat out "
            f"the service used {f['server_cpu_s'] / args.seconds:.2f} CPUs, the load "
            f"{f['load_cpu_s'] / args.seconds:.2f}",
            flush=True,
        )
        for text, count in f["why"]:
            print(f"    {count} x {text}", flush=True)
    if "redis3" in figures:
        three = figures["redis3"]["setups_per_s"]
        for key, name in (("redis1", "one Redis node"), ("memory", "one in-memory node")):
            if key in figures:
                print(f"three nodes / {name}: {three / figures[key]['setups_per_s']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
