"""Key-policy documents: the KMS rules (errors) and the risks beyond them (warnings).

Pure functions: text in, parsed document and findings out. Every finding names
the JSON path of the element it is about, e.g. `Statement[2].Principal.AWS`.
Sources: AWS KMS Developer Guide, "Key policies" and "Key policy elements";
IAM User Guide, "IAM JSON policy element reference"; the botocore model
(../shared/reference/kms-facts.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.keys import ACCOUNT_ID_RE
from kms_policy_service.validation.wildcards import WildcardTexts

MAX_POLICY_BYTES = 32_768  # KMS quota "Key policy document size", cannot be raised
MAX_DEPTH = 16  # a key policy nests 5 levels (Statement[i].Condition.Op.Key[j]); allow slack
VERSIONS = ("2012-10-17", "2008-10-17")
CURRENT_VERSION = "2012-10-17"

# botocore model, PolicyType: [\u0009\u000A\u000D\u0020-\u00FF]+
_BAD_CHAR = re.compile(r"[^\t\n\r\x20-\xff]")
# What json.loads leaves of a \uD800-\uDFFF escape that is not half of a pair.
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOP_LEVEL = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_PRINCIPAL_TYPES = frozenset({"AWS", "Service", "Federated"})

_PARTITION = r"aws|aws-cn|aws-us-gov"
# IAM names and account IDs are ASCII (re.ASCII: `\w` and digits of no other script).
_IAM_PRINCIPAL = re.compile(
    rf"arn:(?:{_PARTITION}):iam::[0-9]{{12}}:(?:root|(?:user|role)(?:/[\w+=,.@-]+)+)",
    re.ASCII,
)
# KMS Developer Guide, "Key policies" (Principal): an IAM user group is not a valid
# principal in any policy, so a statement naming one can never be written.
_IAM_GROUP = re.compile(rf"arn:(?:{_PARTITION}):iam::[0-9]{{12}}:group/.*", re.DOTALL)
_STS_PRINCIPAL = re.compile(
    rf"arn:(?:{_PARTITION}):sts::[0-9]{{12}}:(?:assumed-role/[\w+=,.@-]+/[\w+=,.@-]+|federated-user/[\w+=,.@-]+)",
    re.ASCII,
)
_SERVICE_PRINCIPAL = re.compile(r"[a-z0-9][a-z0-9.-]*\.amazonaws\.com(?:\.cn)?")
_FEDERATED_PRINCIPAL = re.compile(
    rf"(?:arn:(?:{_PARTITION}):iam::[0-9]{{12}}:(?:saml-provider|oidc-provider)/[\w./:+=,@-]+"
    r"|cognito-identity\.amazonaws\.com|www\.amazon\.com|graph\.facebook\.com|accounts\.google\.com)",
    re.ASCII,
)
_ACTION = re.compile(r"kms:[A-Za-z*?]+", re.IGNORECASE)
_RESOURCE = re.compile(rf"arn:(?:{_PARTITION}|\*):kms:[a-z0-9*?-]*:[0-9*?]*:key/[\w*?-]+", re.ASCII)
_KEY_RESOURCE_ANY = re.compile(r"arn:[^:]*:kms:[^:]*:[^:]*:key/.+")

# IAM User Guide, "Condition operators".
_CONDITION_OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
        "NumericEquals",
        "NumericNotEquals",
        "NumericLessThan",
        "NumericLessThanEquals",
        "NumericGreaterThan",
        "NumericGreaterThanEquals",
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
        "Bool",
        "BinaryEquals",
        "IpAddress",
        "NotIpAddress",
        "ArnEquals",
        "ArnLike",
        "ArnNotEquals",
        "ArnNotLike",
    }
)
_CONDITION_OPERATOR = re.compile(
    r"(?:(?:ForAllValues|ForAnyValue):)?(?P<op>[A-Za-z]+?)(?:IfExists)?"
)
_CONDITION_KEY = re.compile(r"[A-Za-z0-9-]+:[\w/:.@*?-]+")

# AWS KMS Developer Guide, "AWS KMS permissions" (the kms: actions a policy can name).
KMS_ACTIONS = [
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateGrant",
    "CreateKey",
    "Decrypt",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncryptFrom",
    "ReEncryptTo",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "SynchronizeMultiRegionKey",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
]
_KMS_ACTIONS_LOWER = tuple(f"kms:{a}".lower() for a in KMS_ACTIONS)
_KMS_ACTION_TEXTS = WildcardTexts(_KMS_ACTIONS_LOWER, ignore_case=True)


@dataclass(frozen=True)
class ParsedPolicy:
    """A policy document that parsed; `document` is None when it did not."""

    text: str
    document: dict[str, Any] | None
    findings: tuple[Finding, ...]


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it saw twice."""

    duplicates: list[str]


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk_duplicates(value: Any, path: str) -> Iterator[Finding]:
    if isinstance(value, _Object):
        for key in value.duplicates:
            yield Finding.error(
                "DUPLICATE_KEY", _join(path, key), f"the key {key!r} appears more than once"
            )
        for key, child in value.items():
            yield from _walk_duplicates(child, _join(path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk_duplicates(child, _join(path, i))


def check_text(text: str) -> list[Finding]:
    """Size and character-set rules, before any parsing."""
    if not text:
        return [Finding.error("EMPTY_POLICY", "", "the policy is empty")]
    size = len(text.encode("utf-8"))
    if size > MAX_POLICY_BYTES:
        return [
            Finding.error(
                "POLICY_TOO_LARGE",
                "",
                f"the policy is {size} bytes; KMS allows at most {MAX_POLICY_BYTES}",
            )
        ]
    bad = _BAD_CHAR.search(text)
    if bad:
        return [
            Finding.error(
                "INVALID_CHARACTER",
                "",
                f"character U+{ord(bad.group()):04X} at offset {bad.start()} is not allowed: "
                "KMS accepts only tab, LF, CR and U+0020 to U+00FF",
            )
        ]
    return []


def parse_policy(text: str) -> ParsedPolicy:
    """Check a policy document against the KMS rules, without key-specific checks."""
    findings = check_text(text)
    if findings:
        return ParsedPolicy(text, None, tuple(findings))
    try:
        document = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_no_constants)
    except RecursionError:
        return ParsedPolicy(text, None, (_too_deep(),))
    except ValueError as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        return ParsedPolicy(
            text, None, (Finding.error("INVALID_JSON", "", f"not valid JSON: {message}{where}"),)
        )
    if not isinstance(document, dict):
        return ParsedPolicy(
            text,
            None,
            (
                Finding.error(
                    "NOT_AN_OBJECT", "", "the policy must be a JSON object at the top level"
                ),
            ),
        )
    if _depth(document) > MAX_DEPTH:
        return ParsedPolicy(text, None, (_too_deep(),))
    unpaired = list(_unpaired_surrogates(document))
    if unpaired:
        return ParsedPolicy(text, None, tuple(unpaired))
    findings = list(_walk_duplicates(document, ""))
    findings.extend(_check_document(document))
    return ParsedPolicy(text, document, tuple(findings))


def _depth(value: Any) -> int:
    """How deeply containers nest (iteratively: hostile input must not exhaust the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _unpaired_surrogates(document: Any) -> Iterator[Finding]:
    """INVALID_CHARACTER for every key or string holding an unpaired surrogate escape.

    The text is plain ASCII, so check_text passed it, but such an escape encodes no
    character: KMS's character rule cannot accept it, and nothing downstream (UTF-8,
    protobuf) can carry it. Iterative, like _depth.
    """
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            items: list[tuple[Any, str]] = []
            for key, child in node.items():
                child_path = _join(path, key)
                if bad := _first_surrogate(key):
                    yield _surrogate_finding(child_path, "key", bad)
                items.append((child, child_path))
            stack.extend(reversed(items))  # report in document order
        elif isinstance(node, list):
            stack.extend(reversed([(c, _join(path, i)) for i, c in enumerate(node)]))
        elif isinstance(node, str) and (bad := _first_surrogate(node)):
            yield _surrogate_finding(path, "string", bad)


def _first_surrogate(text: str) -> re.Match[str] | None:
    return None if text.isascii() else _SURROGATE.search(text)


def _surrogate_finding(path: str, what: str, bad: re.Match[str]) -> Finding:
    return Finding.error(
        "INVALID_CHARACTER",
        path,
        f"the {what} holds \\u{ord(bad.group()):04x} at character {bad.start()}: an unpaired "
        "UTF-16 surrogate escape (half a pair) encodes no character; KMS accepts only tab, "
        "LF, CR and U+0020 to U+00FF",
    )


def _too_deep() -> Finding:
    return Finding.error(
        "NESTED_TOO_DEEPLY",
        "",
        f"the policy nests objects and lists more than {MAX_DEPTH} levels deep; "
        "a key policy needs at most 5",
    )


def _check_document(doc: dict[str, Any]) -> Iterator[Finding]:
    for key in doc:
        if key not in _TOP_LEVEL:
            yield Finding.error(
                "UNKNOWN_ELEMENT",
                key,
                f"{key!r} is not a policy element (allowed: Version, Id, Statement)",
            )
    version = doc.get("Version")
    if version is None:
        yield Finding.warning(
            "MISSING_VERSION",
            "Version",
            f'no Version: IAM assumes "2008-10-17"; set "{CURRENT_VERSION}"',
        )
    elif version not in VERSIONS:
        yield Finding.error(
            "INVALID_VERSION", "Version", f'Version must be "{CURRENT_VERSION}", not {version!r}'
        )
    elif version != CURRENT_VERSION:
        yield Finding.warning(
            "LEGACY_VERSION",
            "Version",
            f'Version {version} disables policy variables; use "{CURRENT_VERSION}"',
        )
    if "Id" in doc and not isinstance(doc["Id"], str):
        yield Finding.error("INVALID_ID", "Id", "Id must be a string")
    if "Statement" not in doc:
        yield Finding.error("MISSING_STATEMENT", "Statement", "a policy needs a Statement")
        return
    statements = doc["Statement"]
    if isinstance(statements, dict):
        yield from _check_statement(statements, "Statement")
        return
    if not isinstance(statements, list) or not statements:
        yield Finding.error(
            "INVALID_STATEMENT",
            "Statement",
            "Statement must be an object or a non-empty list of objects",
        )
        return
    sids: dict[str, int] = {}
    for i, statement in enumerate(statements):
        path = f"Statement[{i}]"
        if not isinstance(statement, dict):
            yield Finding.error("INVALID_STATEMENT", path, "each statement must be an object")
            continue
        yield from _check_statement(statement, path)
        sid = statement.get("Sid")
        if isinstance(sid, str):
            if sid in sids:
                yield Finding.error(
                    "DUPLICATE_SID",
                    f"{path}.Sid",
                    f"Sid {sid!r} is already used by Statement[{sids[sid]}]",
                )
            else:
                sids[sid] = i


def iter_statements(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, statement) for every statement object of a parsed document."""
    statements = doc.get("Statement")
    if isinstance(statements, dict):
        yield "Statement", statements
    elif isinstance(statements, list):
        for i, s in enumerate(statements):
            if isinstance(s, dict):
                yield f"Statement[{i}]", s


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _exactly_one(statement: dict[str, Any], path: str, a: str, b: str) -> Iterator[Finding]:
    if a in statement and b in statement:
        yield Finding.error(
            "CONFLICTING_ELEMENTS", path, f"a statement may have {a} or {b}, not both"
        )
    elif a not in statement and b not in statement:
        yield Finding.error(
            f"MISSING_{a.upper()}",
            f"{path}.{a}",
            f"the statement has no {a} (or {b}), so it can never take effect",
        )


def _check_statement(s: dict[str, Any], path: str) -> Iterator[Finding]:
    for key in s:
        if key not in _STATEMENT_KEYS:
            yield Finding.error(
                "UNKNOWN_ELEMENT", _join(path, key), f"{key!r} is not a statement element"
            )
    if "Sid" in s and not isinstance(s["Sid"], str):
        yield Finding.error("INVALID_SID", f"{path}.Sid", "Sid must be a string")
    effect = s.get("Effect")
    if effect not in ("Allow", "Deny"):
        yield Finding.error(
            "INVALID_EFFECT",
            f"{path}.Effect",
            'Effect must be "Allow" or "Deny"'
            + ("" if effect is None else f", not {json.dumps(effect)[:60]}"),
        )
    yield from _exactly_one(s, path, "Principal", "NotPrincipal")
    for key in ("Principal", "NotPrincipal"):
        if key in s:
            yield from _check_principal(s[key], f"{path}.{key}")
    yield from _exactly_one(s, path, "Action", "NotAction")
    for key in ("Action", "NotAction"):
        if key in s:
            yield from _check_actions(s[key], f"{path}.{key}", negated=key == "NotAction")
    yield from _exactly_one(s, path, "Resource", "NotResource")
    for key in ("Resource", "NotResource"):
        if key in s:
            yield from _check_resources(s[key], f"{path}.{key}", negated=key == "NotResource")
    if "Condition" in s:
        yield from _check_condition(s["Condition"], f"{path}.Condition")
    if effect == "Allow":
        yield from _warn_broad_allow(s, path)


def _string_list(value: Any, path: str, what: str) -> Iterator[tuple[str, str] | Finding]:
    """Yield (path, string) per item of a string-or-list element, or a Finding if malformed."""
    if isinstance(value, str):
        yield path, value
        return
    if not isinstance(value, list) or not value:
        yield Finding.error(
            f"INVALID_{what.upper()}", path, f"{what} must be a string or a non-empty list"
        )
        return
    for i, item in enumerate(value):
        if isinstance(item, str):
            yield f"{path}[{i}]", item
        else:
            yield Finding.error(
                f"INVALID_{what.upper()}", f"{path}[{i}]", f"{what} must be a string"
            )


def _check_principal(value: Any, path: str) -> Iterator[Finding]:
    if value == "*":
        return
    if not isinstance(value, dict) or not value:
        yield Finding.error(
            "INVALID_PRINCIPAL",
            path,
            'a principal is "*" or an object of AWS, Service or Federated principals',
        )
        return
    for kind, entries in value.items():
        kind_path = f"{path}.{kind}"
        if kind not in _PRINCIPAL_TYPES:
            yield Finding.error(
                "INVALID_PRINCIPAL",
                kind_path,
                f"{kind!r} is not a principal type (AWS, Service or Federated)",
            )
            continue
        for item in _string_list(entries, kind_path, "principal"):
            if isinstance(item, Finding):
                yield item
                continue
            item_path, principal = item
            if kind == "AWS" and _IAM_GROUP.fullmatch(principal):
                yield Finding.error(
                    "INVALID_PRINCIPAL",
                    item_path,
                    f"{principal!r} is an IAM group, and groups are not principals: no policy "
                    "can name one; name its users or roles, or use the account and the "
                    "group's IAM policy",
                )
            elif not _principal_ok(kind, principal):
                yield Finding.error(
                    "INVALID_PRINCIPAL", item_path, f"{principal!r} is not a valid {kind} principal"
                )


def _principal_ok(kind: str, principal: str) -> bool:
    if kind == "AWS":
        return (
            principal == "*"
            or bool(ACCOUNT_ID_RE.fullmatch(principal))
            or bool(_IAM_PRINCIPAL.fullmatch(principal))
            or bool(_STS_PRINCIPAL.fullmatch(principal))
        )
    if kind == "Service":
        return principal == "*" or bool(_SERVICE_PRINCIPAL.fullmatch(principal))
    return bool(_FEDERATED_PRINCIPAL.fullmatch(principal))


def _check_actions(value: Any, path: str, *, negated: bool) -> Iterator[Finding]:
    for item in _string_list(value, path, "action"):
        if isinstance(item, Finding):
            yield item
            continue
        item_path, action = item
        if action == "*":
            if negated:
                yield Finding.error(
                    "NEVER_MATCHES",
                    item_path,
                    'NotAction "*" excludes every action, so the statement can never take effect',
                )
            continue
        if not _ACTION.fullmatch(action):
            yield Finding.error(
                "INVALID_ACTION",
                item_path,
                f"{action!r} is not a KMS action: use kms:<Action> (wildcards allowed) or *",
            )
            continue
        matched = _KMS_ACTION_TEXTS.matching(action)
        if not matched:
            yield Finding.error(
                "UNKNOWN_ACTION",
                item_path,
                f"{action!r} matches no KMS action, so it can never take effect",
            )
        elif negated and len(matched) == len(_KMS_ACTIONS_LOWER):
            yield Finding.error(
                "NEVER_MATCHES",
                item_path,
                f"NotAction {action!r} excludes every KMS action, so the statement can never "
                "take effect",
            )


def _check_resources(value: Any, path: str, *, negated: bool) -> Iterator[Finding]:
    for item in _string_list(value, path, "resource"):
        if isinstance(item, Finding):
            yield item
            continue
        item_path, resource = item
        if resource == "*":
            if negated:
                yield Finding.error(
                    "NEVER_MATCHES",
                    item_path,
                    'NotResource "*" excludes the key itself, so the statement can never take '
                    "effect",
                )
            continue
        if negated:
            continue  # excluding something that is not this key leaves the key in scope
        if not _RESOURCE.fullmatch(resource):
            yield Finding.error(
                "NEVER_MATCHES",
                item_path,
                f'{resource!r} can never name a KMS key; in a key policy Resource is "*" '
                "(this key)",
            )
        else:
            yield Finding.warning(
                "RESOURCE_NOT_STAR",
                item_path,
                'in a key policy Resource "*" means this key; a key ARN here only matches '
                "that one key",
            )


def _check_condition(value: Any, path: str) -> Iterator[Finding]:
    if not isinstance(value, dict):
        yield Finding.error(
            "INVALID_CONDITION", path, "Condition must be an object of operator to object"
        )
        return
    for operator, block in value.items():
        op_path = f"{path}.{operator}"
        m = _CONDITION_OPERATOR.fullmatch(operator)
        if (
            not m
            or (m["op"] not in _CONDITION_OPERATORS and m["op"] != "Null")
            or (m["op"] == "Null" and operator != "Null")
        ):
            yield Finding.error(
                "INVALID_CONDITION_OPERATOR", op_path, f"{operator!r} is not a condition operator"
            )
        if not isinstance(block, dict) or not block:
            yield Finding.error(
                "INVALID_CONDITION",
                op_path,
                "a condition operator maps to a non-empty object of condition key to value",
            )
            continue
        for key, val in block.items():
            key_path = f"{op_path}.{key}"
            if not _CONDITION_KEY.fullmatch(key):
                yield Finding.error(
                    "INVALID_CONDITION_KEY", key_path, f"{key!r} is not a condition key"
                )
            values = val if isinstance(val, list) else [val]
            if isinstance(val, list) and not val:
                yield Finding.error(
                    "INVALID_CONDITION_VALUE",
                    key_path,
                    "an empty list of values can never match, so the statement never takes effect",
                )
            for v in values:
                if isinstance(v, (dict, list)) or v is None:
                    yield Finding.error(
                        "INVALID_CONDITION_VALUE",
                        key_path,
                        "condition values are strings, numbers, booleans or a list of them",
                    )
                    break


def _aws_principals(s: dict[str, Any]) -> list[str]:
    principal = s.get("Principal")
    if principal == "*":
        return ["*"]
    if isinstance(principal, dict):
        return [p for p in as_list(principal.get("AWS", [])) if isinstance(p, str)]
    return []


def _grants_all_kms(s: dict[str, Any]) -> bool:
    return any(
        isinstance(a, str) and a.lower() in ("*", "kms:*") for a in as_list(s.get("Action", []))
    )


def _warn_broad_allow(s: dict[str, Any], path: str) -> Iterator[Finding]:
    principals = _aws_principals(s)
    if "NotPrincipal" in s:
        yield Finding.warning(
            "NOT_PRINCIPAL_ALLOW",
            f"{path}.NotPrincipal",
            "Allow with NotPrincipal grants everyone not listed, including other accounts",
        )
    if "*" in principals and "Condition" not in s:
        if _grants_all_kms(s):
            yield Finding.warning(
                "PUBLIC_KMS_ALL",
                f"{path}.Principal",
                'Principal "*" is allowed kms:* with no Condition: anyone who can call KMS '
                "can use and manage this key",
            )
        else:
            yield Finding.warning(
                "PUBLIC_ACCESS",
                f"{path}.Principal",
                'Principal "*" with no Condition allows any AWS principal',
            )
    elif _grants_all_kms(s):
        broad = [
            p
            for p in principals
            if p != "*" and not ACCOUNT_ID_RE.fullmatch(p) and not p.endswith(":root")
        ]
        if broad:
            yield Finding.warning(
                "KMS_ALL_NON_ROOT",
                f"{path}.Action",
                f"kms:* is granted to {', '.join(broad)}; grant the actions it needs instead",
            )


def key_resource_findings(doc: dict[str, Any], key_arn: str) -> Iterator[Finding]:
    """Resources that name another key than `key_arn` can never take effect."""
    key = WildcardTexts((key_arn,))  # ARNs match case-sensitively
    for path, s in iter_statements(doc):
        resources = s.get("Resource")
        if resources is None:
            continue
        items = as_list(resources)
        patterns = [r for r in items if isinstance(r, str)]
        if (
            patterns
            and not any(r == "*" or key.any_match(r) for r in patterns)
            and all(r == "*" or _KEY_RESOURCE_ANY.fullmatch(r) for r in patterns)
        ):
            yield Finding.error(
                "NEVER_MATCHES",
                f"{path}.Resource",
                f"no Resource matches this key ({key_arn}), so the statement can never take effect",
            )
