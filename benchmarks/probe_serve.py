"""Probe `deltabelief serve` the way issue 14 did, on the tiny model over loopback.

Prints the answer to a 100 KB prompt, to ``seed`` = 10**23, and the status counts of 50
concurrent clients (``max_tokens`` 1). Run from the repository root:

    python -m benchmarks.probe_serve
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter

import requests

from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.serving.openai_server import running_server

CHAT = [{"role": "user", "content": "Is a cat alive?"}]


def burst(url: str, clients: int = 50) -> Counter:
    """Status codes (or exception names, e.g. ConnectionResetError) of ``clients`` concurrent requests."""
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    body = json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 1})
    results: list = []

    def one() -> None:
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=120)
            connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            results.append(connection.getresponse().status)
        except OSError as err:
            results.append(type(err).__name__)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return Counter(results)


def main() -> None:
    model, tokenizer = tiny_causal_lm(0)
    with running_server(model, tokenizer, model_name="tiny") as url:
        def post(body: dict) -> str:
            response = requests.post(f"{url}/chat/completions", data=json.dumps(body), timeout=300)
            return f"{response.status_code} {response.text[:160]}"

        print("seed=10**23:", post({"model": "tiny", "messages": CHAT, "seed": 10**23, "max_tokens": 2}))
        long_chat = [{"role": "user", "content": "word " * 20000}]
        print("100 KB prompt:", post({"model": "tiny", "messages": long_chat, "max_tokens": 2}))
        print("burst of 50:", dict(burst(url)))


if __name__ == "__main__":
    main()
