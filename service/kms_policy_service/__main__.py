"""`python -m kms_policy_service`: the same as the kms-policy-service command."""

import sys

from kms_policy_service.cli import main

sys.exit(main())
