"""Check that the streams of ONE gRPC channel spread over every inference replica.

Runs inside the compose network (service ``replica-check`` of compose.replicas.yaml, the
inference image). Resolves the inference service name (one A record per replica), reads each
replica's ``a2f_inference_streams_total`` from its metrics port, runs N streams over one
channel ``dns:///<service>:<port>`` with the ``round_robin`` policy, reads the counters
again and prints one JSON line: {"replicas": {ip: streams served}, "ok": streams that
ended OK, ...}. Exits 0 when every stream ended OK and every replica served at least
``--min-per-replica`` streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import build_requests, stream_audio
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc


def addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({str(i[4][0]) for i in infos})


def streams_served(ip: str, metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://{ip}:{metrics_port}/metrics", timeout=10) as r:
        text = r.read(8 << 20).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "a2f_inference_streams":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def run_streams(target: str, count: int, concurrency: int, seconds: float) -> int:
    requests = build_requests(synthetic_speech(seconds), 16000)
    options = [("grpc.lb_policy_name", "round_robin")]
    ok = 0
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(channel)
        gate = asyncio.Semaphore(concurrency)

        async def one() -> bool:
            async with gate:
                result = await stream_audio(stub, requests, timeout_s=120, keep_data=False)
                return bool(result.ok)

        for good in await asyncio.gather(*(one() for _ in range(count))):
            ok += int(good)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", default="inference")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=9101)
    p.add_argument("--replicas", type=int, default=2, help="replicas to wait for (DNS)")
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=1.0, help="audio per stream")
    p.add_argument("--min-per-replica", type=int, default=5)
    p.add_argument("--wait-s", type=float, default=300.0)
    a = p.parse_args()

    deadline = time.monotonic() + a.wait_s
    while True:  # every replica in DNS and answering its metrics
        try:
            ips = addresses(a.service, a.port)
            before = {ip: streams_served(ip, a.metrics_port) for ip in ips}
            if len(ips) >= a.replicas:
                break
        except OSError as err:
            ips, before = [], {}
            print(f"waiting for {a.service}: {err}", file=sys.stderr, flush=True)
        if time.monotonic() > deadline:
            print(f"only {len(ips)} replica(s) of {a.service} after {a.wait_s:.0f} s",
                  file=sys.stderr)
            return 1
        time.sleep(2)
    target = f"dns:///{a.service}:{a.port}"
    ok = asyncio.run(run_streams(target, a.streams, a.concurrency, a.seconds))
    served = {ip: streams_served(ip, a.metrics_port) - before[ip] for ip in ips}
    print(json.dumps({"target": target, "streams": a.streams, "ok": ok, "replicas": served}),
          flush=True)
    spread = all(n >= a.min_per_replica for n in served.values())
    return 0 if ok == a.streams and spread else 1


if __name__ == "__main__":
    sys.exit(main())
