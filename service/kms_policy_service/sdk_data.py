"""`python -m kms_policy_service.sdk_data DIR`: write the pruned AWS SDK data for AWS_DATA_PATH.

The image runs it at build time (deploy/Dockerfile); see kms.write_sdk_data.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kms_policy_service.sdk_data DIR", file=sys.stderr)
        return 2
    from kms_policy_service.kms import write_sdk_data

    write_sdk_data(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
