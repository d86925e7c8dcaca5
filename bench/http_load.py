"""Open-loop HTTP load from its own process: GET a URL at a fixed rate, print one JSON line with
(send time on CLOCK_MONOTONIC, latency s, status) per request.

    python bench/http_load.py http://127.0.0.1:5050/api/snapshot --rate 50 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def load(url: str, rate: float, duration: float) -> list[tuple[float, float, int]]:
    samples: list[tuple[float, float, int]] = []
    interval = 1.0 / rate

    async def one(session: aiohttp.ClientSession) -> None:
        sent = time.monotonic()
        try:
            async with session.get(url) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        samples.append((sent, time.monotonic() - sent, status))

    async with aiohttp.ClientSession() as session:
        tasks = []
        start = time.monotonic()
        n = 0
        while (due := start + n * interval) < start + duration:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(session)))  # open loop: never wait for replies
            n += 1
        await asyncio.gather(*tasks)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load(args.url, args.rate, args.duration))))


if __name__ == "__main__":
    main()
