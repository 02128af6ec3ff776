"""The bare-gRPC limit: a grpc.aio server whose GetKeyPolicy echoes a fixed answer.

Same proto, same loop policy (uvloop), same client as the PolicyService runs, so
the difference is exactly the service's own work. With `--kms URL` it is the bare
proxy instead: each GetKeyPolicy makes one aiobotocore call (the direct client's) and
returns KMS's answer, and nothing else — the floor for any grpc.aio server that calls
KMS through aiobotocore in one Python process.

    python -m bench.echo_server [--kms URL]   # prints {"port": N} when ready
"""

from __future__ import annotations

import argparse
import json
from contextlib import AsyncExitStack
from typing import Any

import grpc

from bench.fake_kms import POLICY, key_arn
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc


class Echo(pb_grpc.PolicyServiceServicer):
    async def GetKeyPolicy(
        self, request: pb.GetKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeyPolicyResponse:
        return pb.GetKeyPolicyResponse(
            key_arn=key_arn(request.key_id), policy_name="default", policy=POLICY, etag="0" * 64
        )


class Proxy(pb_grpc.PolicyServiceServicer):
    def __init__(self, kms: Any) -> None:
        self._kms = kms

    async def GetKeyPolicy(
        self, request: pb.GetKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeyPolicyResponse:
        arn = key_arn(request.key_id)
        answer = await self._kms.get_key_policy(KeyId=arn, PolicyName="default")
        return pb.GetKeyPolicyResponse(
            key_arn=arn, policy_name="default", policy=answer["Policy"], etag="0" * 64
        )


async def serve(kms_url: str) -> None:
    async with AsyncExitStack() as stack:
        servicer: pb_grpc.PolicyServiceServicer = Echo()
        if kms_url:
            from bench.load import direct_client

            servicer = Proxy(await stack.enter_async_context(direct_client(kms_url, 256)))
        server = grpc.aio.server()
        pb_grpc.add_PolicyServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(json.dumps({"port": port}), flush=True)
        await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--kms", default="", help="proxy to this KMS URL instead of echoing")
    uvloop.run(serve(parser.parse_args().kms))
