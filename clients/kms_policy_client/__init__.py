"""Python client for kms-policy-service (issue 7 fills this in)."""

__all__: list[str] = []
