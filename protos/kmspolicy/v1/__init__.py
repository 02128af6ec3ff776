"""Generated stubs of the kmspolicy.v1 contract (regenerate with `make protos`)."""
