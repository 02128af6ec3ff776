"""The contract's names, read once from the generated descriptor."""

from __future__ import annotations

from kmspolicy.v1 import policy_service_pb2

POLICY_SERVICE: str = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
"""`kmspolicy.v1.PolicyService`: the gRPC service, its health name and its metrics label."""
