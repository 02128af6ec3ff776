"""The bare-gRPC limit: a grpc.aio server whose GetKeyPolicy echoes a fixed answer.

Same proto, same loop policy (uvloop), same client as the PolicyService runs, so
the difference is exactly the service's own work.

    python -m bench.echo_server   # prints {"port": N} when ready
"""

from __future__ import annotations

import json

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


async def serve() -> None:
    server = grpc.aio.server()
    pb_grpc.add_PolicyServiceServicer_to_server(Echo(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
