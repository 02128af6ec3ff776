# The role kms-policy-service assumes in a member account (--account-role
# ACCOUNT=arn:aws:iam::ACCOUNT:role/kms-policy-service); the Terraform twin of
# role.cfn.yaml. Apply once per member account (a provider per account, or a module
# in each account's stack).

variable "service_principal_arn" {
  description = "ARN of the service's own role in the home account"
  type        = string
}

variable "external_id" {
  description = "The value of --assume-role-external-id"
  type        = string
  sensitive   = true
}

variable "managed_tag_value" {
  description = "Keys are managed only when tagged kms-policy-service=<this>"
  type        = string
  default     = "managed"
}

data "aws_caller_identity" "this" {}
data "aws_partition" "this" {}

data "aws_iam_policy_document" "trust" {
  statement {
    sid     = "ServiceAssumes"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = [var.service_principal_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [var.external_id]
    }
  }
  # --caller-session-tags: the service tags each session with the caller's identity.
  statement {
    sid     = "ServiceTagsSessionsWithTheCaller"
    actions = ["sts:TagSession"]
    principals {
      type        = "AWS"
      identifiers = [var.service_principal_arn]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = ["kms-policy-service:caller"]
    }
  }
}

data "aws_iam_policy_document" "manage" {
  statement {
    sid = "ManageKeyPoliciesOfThisAccountsKeys"
    actions = [
      "kms:GetKeyPolicy",
      "kms:PutKeyPolicy",
      "kms:ListKeyPolicies",
      "kms:DescribeKey",
    ]
    resources = [
      "arn:${data.aws_partition.this.partition}:kms:*:${data.aws_caller_identity.this.account_id}:key/*",
    ]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/kms-policy-service"
      values   = [var.managed_tag_value]
    }
  }
}

resource "aws_iam_role" "kms_policy_service" {
  name                 = "kms-policy-service"
  max_session_duration = 3600
  assume_role_policy   = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "manage" {
  name   = "manage-key-policies"
  role   = aws_iam_role.kms_policy_service.id
  policy = data.aws_iam_policy_document.manage.json
}

output "role_arn" {
  description = "Pass as --account-role ACCOUNT=<this>"
  value       = aws_iam_role.kms_policy_service.arn
}
