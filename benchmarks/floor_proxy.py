"""The floor: the thinnest pass-through on the gateway's stack (hypercorn trio worker,
quart-trio, httpx2). Whatever the gateway costs beyond this is ours to explain.

    FLOOR_UPSTREAM=http://127.0.0.1:9000 python benchmarks/floor_proxy.py --bind 127.0.0.1:9100

Every POST is sent to the same path on FLOOR_UPSTREAM with one pooled client; the
body is parsed only for ``"stream"``; a stream is relayed chunk by chunk.
"""

import argparse
import json
import os

import httpx2
from hypercorn.config import Config
from hypercorn.run import run
from quart import Response, request
from quart_trio import QuartTrio

app = QuartTrio(__name__)
app.config["RESPONSE_TIMEOUT"] = None
UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9000")
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-floor"}
clients: list[httpx2.AsyncClient] = []


@app.before_serving
async def open_client() -> None:
    limits = httpx2.Limits(max_connections=2048, max_keepalive_connections=128)
    timeout = httpx2.Timeout(600.0)
    clients.append(
        httpx2.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=timeout, trust_env=False)
    )


@app.after_serving
async def close_client() -> None:
    await clients.pop().aclose()


@app.post("/<path:path>")
async def proxy(path: str) -> Response:
    raw = await request.get_data()
    stream = json.loads(raw).get("stream") is True
    client = clients[0]
    upstream = await client.send(
        client.build_request("POST", request.path, content=raw, headers=HEADERS), stream=stream
    )
    headers = {"content-type": upstream.headers.get("content-type", "application/json")}
    if not stream:
        return Response(upstream.content, status=upstream.status_code, headers=headers)

    async def relay():
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return Response(relay(), status=upstream.status_code, headers=headers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="127.0.0.1:9100")
    parser.add_argument("--workers", type=int, default=1, help="1: in this process")
    args = parser.parse_args()
    config = Config()
    config.application_path = "floor_proxy:app"
    config.worker_class = "trio"
    config.bind = [args.bind]
    config.workers = 0 if args.workers == 1 else args.workers
    config.accesslog = None
    config.include_server_header = False
    raise SystemExit(run(config))
