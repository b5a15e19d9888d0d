"""The verl path's judge client against a fake judge of fixed latency on loopback.

Each game asks its questions one after another (as the agent loop does); all games run at once on
one event loop, as on one agent-loop worker. Reported per ``judge.max_concurrency``: games/s,
judge calls/s, the most calls in flight, and efficiency = calls/s ÷ (max_concurrency / latency),
the share of the ideal a bounded client can reach (1.0 = the bound is the only limit).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from deltabelief.config import JudgeConfig
from deltabelief.judges.async_client import AsyncOpenAIJudge
from deltabelief.types import JudgeRequest, Target

LATENCY_S = 0.02
GAMES = 64
TURNS = 10
CONCURRENCY = (8, 32)


async def _serve(latency_s: float) -> tuple[web.AppRunner, str]:
    async def complete(request: web.Request) -> web.Response:
        await request.json()
        await asyncio.sleep(latency_s)
        return web.json_response({"choices": [{"message": {"content": "<answer>no</answer>"},
                                               "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"


async def _measure(max_concurrency: int, latency_s: float, games: int, turns: int) -> dict:
    runner, url = await _serve(latency_s)
    judge = AsyncOpenAIJudge(JudgeConfig(backend="openai", base_url=url, max_concurrency=max_concurrency,
                                         enable_thinking=False, max_tokens=16))
    request = JudgeRequest(task="twenty_questions", target=Target("t", "twenty_questions", "cat"),
                           move="Is it alive?", instructions="secret: cat", labels=("yes", "no"))

    async def game() -> None:
        for _ in range(turns):
            await judge.answer(request)

    try:
        started = time.perf_counter()
        await asyncio.gather(*[game() for _ in range(games)])
        seconds = time.perf_counter() - started
    finally:
        await runner.cleanup()
    calls_per_s = games * turns / seconds
    return {"games_per_s": round(games / seconds, 2), "calls_per_s": round(calls_per_s, 1),
            "max_in_flight": judge.stats["max_in_flight"],
            "efficiency": round(calls_per_s / (max_concurrency / latency_s), 3)}


def run(latency_s: float = LATENCY_S, games: int = GAMES, turns: int = TURNS) -> dict:
    results = {f"max_concurrency_{n}": asyncio.run(_measure(n, latency_s, games, turns)) for n in CONCURRENCY}
    return {"latency_s": latency_s, "games": games, "turns": turns, **results}


if __name__ == "__main__":
    print(run())
