"""A fast fake KMS (and STS) HTTP endpoint speaking the real wire protocols.

KMS: JSON 1.1 (`X-Amz-Target: TrentService.<Op>`); STS: the query protocol with an
XML answer. Every key id is taken to exist. Optional fixed latency per request.
moto saturates at ~450 calls/s here; this serves thousands, so benchmarks measure
the caller, not the fake.

    python -m bench.fake_kms --port 0 [--latency 0.05]   # prints {"port": N} when ready
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict

from aiohttp import web

from kms_policy_service.backend import default_key_policy

ACCOUNT = "123456789012"
REGION = "us-east-1"
POLICY = default_key_policy(ACCOUNT)
STS_IDENTITY = f"""<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::{ACCOUNT}:assumed-role/kms-policy-service/bench</Arn>
    <UserId>AROAEXAMPLE:bench</UserId>
    <Account>{ACCOUNT}</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"""
JSON = "application/x-amz-json-1.1"


def key_arn(key_id: str) -> str:
    if key_id.startswith("arn:"):
        return key_id
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id.removeprefix('alias/')}"


class FakeKms:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.policies: dict[str, str] = {}
        self.started = time.monotonic()
        # operation -> whole seconds since start -> requests: the rate of each over time
        self.counts: dict[str, Counter[int]] = defaultdict(Counter)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({op: dict(by_second) for op, by_second in self.counts.items()})

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        op = target.rsplit(".", 1)[-1] if target else "STS"
        self.counts[op][int(time.monotonic() - self.started)] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if not target:
            return web.Response(text=STS_IDENTITY, content_type="text/xml")
        body = json.loads(await request.read() or b"{}")
        arn = key_arn(body.get("KeyId", ""))
        if op == "DescribeKey":
            answer = {
                "KeyMetadata": {
                    "Arn": arn,
                    "KeyId": arn.rsplit("/", 1)[1],
                    "KeyManager": "CUSTOMER",
                    "KeyState": "Enabled",
                    "AWSAccountId": ACCOUNT,
                }
            }
        elif op == "GetKeyPolicy":
            answer = {"Policy": self.policies.get(arn, POLICY), "PolicyName": "default"}
        elif op == "PutKeyPolicy":
            self.policies[arn] = body["Policy"]
            answer = {}
        elif op == "ListKeyPolicies":
            answer = {"PolicyNames": ["default"], "Truncated": False}
        else:
            return web.Response(
                status=400,
                text=json.dumps({"__type": "UnsupportedOperationException", "message": op}),
                content_type=JSON,
            )
        return web.Response(text=json.dumps(answer), content_type=JSON)


async def serve(port: int, latency: float) -> None:
    app = web.Application()
    fake = FakeKms(latency)
    app.router.add_route("GET", "/counts", fake.stats)  # for the benchmark, not KMS
    app.router.add_route("POST", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.latency))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
