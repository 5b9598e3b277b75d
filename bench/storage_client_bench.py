"""Which S3 client storage/s3.py uses, by measurement: obstore (Rust, async) against aiobotocore (botocore on
aiohttp), in one run, against the same moto S3 server on localhost (tests/s3server.py), interleaved round by round.

    python -m bench.storage_client_bench [--quick] [--rounds N] [--ops N]

Per operation, the median latency (ms) over `--ops` calls per round, then the median and range over the rounds:
put 1 MiB, a 64 KiB range read of a 16 MiB object, head, list (200 keys, one page), presign a GET. The last column
is obstore / aiobotocore (below 1: obstore is faster). moto's server is the same for both, so the ratio says how
much each client adds; against a real store the network dominates both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.common import apply_defaults, cell, fmt

OPERATIONS = ("put 1 MiB", "range 64 KiB", "head", "list 200", "presign")


async def timed(call, ops: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(ops):
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


async def obstore_round(endpoint: str, bucket: str, credentials: dict[str, str], ops: int) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket, endpoint=endpoint, region="us-east-1", virtual_hosted_style_request=False,
        client_options={"allow_http": True}, **credentials,
    )  # fmt: skip
    payload = secrets.token_bytes(1024 * 1024)
    return {
        "put 1 MiB": await timed(lambda: obstore.put_async(store, "bench/put.bin", payload, use_multipart=False), ops),
        "range 64 KiB": await timed(lambda: obstore.get_range_async(store, "bench/big.bin", start=4_000_000,
                                                                     length=65536), ops),  # fmt: skip
        "head": await timed(lambda: obstore.head_async(store, "bench/big.bin"), ops),
        "list 200": await timed(lambda: obstore.list(store, "bench/many", chunk_size=1000).collect_async(), ops),
        "presign": await timed(lambda: obstore.sign_async(store, "GET", "bench/big.bin", timedelta(minutes=5)), ops),
    }


async def botocore_round(endpoint: str, bucket: str, credentials: dict[str, str], ops: int) -> dict[str, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    payload = secrets.token_bytes(1024 * 1024)
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"], config=AioConfig(s3={"addressing_style": "path"}),
    ) as client:  # fmt: skip

        async def range_read() -> bytes:
            response = await client.get_object(Bucket=bucket, Key="bench/big.bin", Range="bytes=4000000-4065535")
            async with response["Body"] as body:
                return await body.read()

        async def listing() -> list:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="bench/many/")
            return [item async for page in pages for item in page.get("Contents", [])]

        return {
            "put 1 MiB": await timed(lambda: client.put_object(Bucket=bucket, Key="bench/put.bin", Body=payload), ops),
            "range 64 KiB": await timed(range_read, ops),
            "head": await timed(lambda: client.head_object(Bucket=bucket, Key="bench/big.bin"), ops),
            "list 200": await timed(listing, ops),
            "presign": await timed(lambda: client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "bench/big.bin"}, ExpiresIn=300), ops),  # fmt: skip
        }


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.s3server import CREDENTIALS, S3Server

    server = S3Server(Path(tempfile.mkdtemp(prefix="cliplog-s3bench-")))
    try:
        bucket = "bench"
        server.create_bucket(bucket)
        server.put_bytes(bucket, "bench/big.bin", secrets.token_bytes(16 * 1024 * 1024))
        for n in range(200):
            server.put_bytes(bucket, f"bench/many/{n:04}.bin", b"x")
        results: dict[str, dict[str, list[float]]] = {"obstore": {}, "aiobotocore": {}}
        for round_ in range(args.rounds):
            for name, run in (("obstore", obstore_round), ("aiobotocore", botocore_round))[:: 1 if round_ % 2 == 0 else -1]:
                figures = await run(server.direct, bucket, dict(CREDENTIALS), args.ops)
                for op, value in figures.items():
                    results[name].setdefault(op, []).append(value)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        print(f"\nS3 clients against moto's server on localhost: median ms per call ({args.rounds} rounds of "
              f"{args.ops} calls; median and range over the rounds)\n")  # fmt: skip
        print("| operation | obstore | aiobotocore | obstore / aiobotocore |")
        print("| --- | --- | --- | --- |")
        for op in OPERATIONS:
            a, b = results["obstore"][op], results["aiobotocore"][op]
            print(f"| {op} | {cell(a)} | {cell(b)} | {fmt(statistics.median(a) / statistics.median(b))} |")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--ops", type=int)
    parser.add_argument("--dsn", help="ignored (`make bench ARGS=...` passes it to every bench); no database is used")
    arguments = apply_defaults(parser.parse_args(), {"rounds": 3, "ops": 10}, {"rounds": 5, "ops": 30})
    os.environ.pop("AWS_PROFILE", None)
    asyncio.run(main(arguments))
