"""What the plugins' request hooks cost on the data plane.

    python bench/plugin_hooks.py --quick     # ~10 s
    python bench/plugin_hooks.py             # ~1 min

1. Without a request hook the app has no hooks middleware; all that is left is ``read_json``'s lookup of
   the request's ``Exchange`` (which every /v1 and /api request has): timed here per call (ns).
2. Loopback, one client, one in-process aiohttp server whose route reads a chat body with ``read_json``
   and answers JSON: µs per request with no hook (the app as ``create_app`` builds it without plugins)
   and with one no-op ``before_request`` + ``after_response`` (the middleware parses the body once and
   the answer again). Rounds alternate; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from superollama.gateway import error_middleware, read_json
from superollama.gateway.exchange import EXCHANGE, Exchange
from superollama.gateway.hooks import HookRequest, HookResponse, hooks_middleware

BODY = {
    "model": "smollm2:135m",
    "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello " * 40}],
    "max_tokens": 16,
}


class NoOp:
    def before(self, request: HookRequest) -> None:
        pass

    def after(self, request: HookRequest, response: HookResponse) -> None:
        pass


def lookup_ns(number: int) -> float:
    request = make_mocked_request("POST", "/v1/chat/completions")
    request[EXCHANGE] = Exchange(request_id="r", protocol="openai")

    def lookup() -> None:
        ex = request.get(EXCHANGE)
        if ex is not None and ex.body is not None:
            raise AssertionError("no hook ran")

    best = min(timeit.repeat(lookup, number=number, repeat=5))
    return best / number * 1e9


async def handler(request: web.Request) -> web.Response:
    body = await read_json(request)
    return web.json_response({"id": "x", "model": body["model"], "choices": [{"text": "hi"}]})


async def serve(hooked: bool) -> tuple[web.AppRunner, str]:
    middlewares = [error_middleware, *([hooks_middleware(NoOp())] if hooked else [])]
    app = web.Application(middlewares=middlewares)
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1/chat/completions"


async def per_request_us(session: aiohttp.ClientSession, url: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        async with session.post(url, json=BODY) as resp:
            await resp.read()
    return (time.perf_counter() - t0) / n * 1e6


async def loopback(n: int, rounds: int) -> dict[str, float]:
    servers = {"no hook": await serve(False), "no-op hooks": await serve(True)}
    results: dict[str, list[float]] = {name: [] for name in servers}
    async with aiohttp.ClientSession() as session:
        for _, url in servers.values():
            await per_request_us(session, url, 200)  # warm-up
        for _ in range(rounds):
            for name, (_, url) in servers.items():
                results[name].append(await per_request_us(session, url, n))
    for runner, _ in servers.values():
        await runner.cleanup()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = ap.parse_args()
    n, rounds = (1000, 3) if args.quick else (5000, 7)
    print(f"read_json's exchange lookup: {lookup_ns(200_000):.0f} ns per request")
    for name, us in asyncio.run(loopback(n, rounds)).items():
        print(f"{name:12s} {us:7.1f} µs per request (median of {rounds} rounds of {n})")


if __name__ == "__main__":
    main()
