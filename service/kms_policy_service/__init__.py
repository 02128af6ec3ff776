"""kms-policy-service: an async gRPC service fronting the AWS KMS key-policy operations."""

__version__ = "0.1.0"

from kms_policy_service.server import Server, create_server
from kms_policy_service.settings import Settings

__all__ = ["Server", "Settings", "__version__", "create_server"]
