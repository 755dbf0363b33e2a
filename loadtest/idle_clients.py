#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each and reads
its answer whole, then leaves every connection open and idle. Once all have
their answer it waits two seconds and prints "ready OPEN FAILED": how many
connections the proxy still holds open, and how many got no answer; then it
holds them until stdin closes. Connections come from 127.0.0.2, 127.0.0.3 …
in turn (at most PER_SOURCE each), so per-address caps and ephemeral ports
are no limit; everything is bounded by a deadline.

    idle_clients.py PORT N [--deadline SECONDS]
"""
import argparse
import asyncio
import sys

PER_SOURCE = 2000


async def one(port, source, held, deadline):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), deadline)
        writer.write(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await asyncio.wait_for(reader.readexactly(length), deadline)
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        held.append((reader, writer))
        return True
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()
    held = []
    gate = asyncio.Semaphore(256)

    async def gated(i):
        async with gate:
            return await one(args.port, f"127.0.0.{2 + i // PER_SOURCE}", held, args.deadline)

    results = await asyncio.gather(*(gated(i) for i in range(args.n)))
    failed = results.count(False)
    # A connection the proxy closed has its end of stream read by now.
    await asyncio.sleep(2)
    still_open = sum(1 for reader, _ in held if not reader.at_eof())
    print(f"ready {still_open} {failed}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
