"""Open N slow SSE streams at once through a proxy and check that every one completes.

    python benchmarks/slow_streams.py --url http://127.0.0.1:8081/v1/chat/completions \
        --api-key KEY --body-file body.json -n 1000

One connection per stream, raw sockets: the client does
almost nothing per byte. Connections are opened over ``--ramp`` seconds: a burst of 1,000
new connections would overflow the listen backlog of a server pinned to one busy core
and measure TCP retransmits instead.
Prints one JSON line: how many completed with status 200 and ``data: [DONE]``, the
most streams open at once, and when all were open (seconds from start).
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlsplit

import trio


async def main(args: argparse.Namespace, body: bytes) -> dict:
    url = urlsplit(args.url)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + (f"X-Api-Key: {args.api_key}\r\n" if args.api_key else "")
        + "\r\n"
    ).encode()
    request = head + body
    state = {"open": 0, "max_open": 0, "ok": 0, "failed": 0, "all_open_at": None, "errors": {}}
    start = trio.current_time()

    connects: list[float] = []
    first_bytes: list[float] = []

    async def one(i: int) -> None:
        await trio.sleep(args.ramp * i / args.n)
        opened = False
        began = trio.current_time()
        try:
            stream = await trio.open_tcp_stream(url.hostname, url.port)
            connects.append(trio.current_time() - began)
            async with stream:
                await stream.send_all(request)
                received = bytearray()
                # The end: EOF, or the last chunk (hypercorn keeps the connection
                # open after a chunked response even when asked to close it).
                while not received.endswith(b"\r\n0\r\n\r\n") and (
                    data := await stream.receive_some(65536)
                ):
                    if not opened:
                        opened = True
                        first_bytes.append(trio.current_time() - began)
                        state["open"] += 1
                        if state["open"] > state["max_open"]:
                            state["max_open"] = state["open"]
                            if state["open"] == args.n:
                                state["all_open_at"] = trio.current_time() - start
                    received += data
            good = (
                received.startswith(b"HTTP/1.1 200")
                and received.count(b"data: ") >= args.min_events
                and b"data: [DONE]" in received
            )
            state["ok" if good else "failed"] += 1
            if not good:
                why = received[:12].decode(errors="replace")
                state["errors"][why] = state["errors"].get(why, 0) + 1
        except OSError as exc:
            state["failed"] += 1
            state["errors"][type(exc).__name__] = state["errors"].get(type(exc).__name__, 0) + 1
        finally:
            if opened:
                state["open"] -= 1

    with trio.move_on_after(args.deadline) as timed_out:
        async with trio.open_nursery() as nursery:
            for i in range(args.n):
                nursery.start_soon(one, i)
    state.pop("open")
    return {
        "n": args.n,
        **state,
        "connect_s": _quantiles(connects),
        "first_byte_s": _quantiles(first_bytes),
        # A connection refused by a full listen queue is retried by the kernel after
        # 1 s, then 3 s, 7 s... (SYN retransmits): these waited for one.
        "connects_over_1s": sum(c >= 0.9 for c in connects),
        "timed_out": timed_out.cancelled_caught,
        "elapsed_s": round(trio.current_time() - start, 3),
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    at = lambda q: round(values[min(int(q * len(values)), len(values) - 1)], 4)  # noqa: E731
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(values[-1], 4)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--ramp", type=float, default=4.0)
    parser.add_argument("--min-events", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    result = trio.run(main, args, body)
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] == result["n"] else 1)
