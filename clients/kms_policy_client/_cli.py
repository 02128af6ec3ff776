"""`kmspolicy`: read, write, check, diff and edit key policies through kms-policy-service.

Exit codes: 0 done; 1 findings with errors (validate), differences (diff), or an edit
not applied; 2 usage; 3 not found; 4 invalid request (bad policy, lockout); 5 not
allowed (permission, authentication, out of scope); 6 conflict (etag mismatch,
precondition, guardrail); 7 temporarily unavailable (rate limited, unavailable,
deadline); 8 other errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kms_policy_client import _errors as errors
from kms_policy_client._client import PolicyClientSync
from kms_policy_client._diff import render, statement_diff
from kms_policy_client._options import DEFAULT_TARGET, ClientOptions, TLSConfig
from kms_policy_client._results import ValidationResult

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID = 0, 1, 2, 3, 4
EXIT_DENIED, EXIT_CONFLICT, EXIT_RETRYABLE, EXIT_ERROR = 5, 6, 7, 8

_EXIT_FOR: tuple[tuple[type[errors.PolicyError], int], ...] = (
    (errors.NotFoundError, EXIT_NOT_FOUND),
    (errors.InvalidRequestError, EXIT_INVALID),
    (errors.PermissionDeniedError, EXIT_DENIED),
    (errors.UnauthenticatedError, EXIT_DENIED),
    (errors.EtagMismatchError, EXIT_CONFLICT),
    (errors.PreconditionFailedError, EXIT_CONFLICT),
    (errors.RateLimitedError, EXIT_RETRYABLE),
    (errors.UnavailableError, EXIT_RETRYABLE),
    (errors.DeadlineExceededError, EXIT_RETRYABLE),
)


def exit_code_for(err: errors.PolicyError) -> int:
    for cls, code in _EXIT_FOR:
        if isinstance(err, cls):
            return code
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmspolicy", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("KMSPOLICY_TARGET", DEFAULT_TARGET),
        help="HOST:PORT of the service (env KMSPOLICY_TARGET)",
    )
    parser.add_argument("--tls-ca", help="PEM CA bundle to trust; enables TLS")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", help="client private key for mutual TLS")
    parser.add_argument("--tls-server-name", help="expected name in the server certificate")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per call, seconds (default 10)"
    )
    parser.add_argument(
        "--output",
        "-O",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    get = sub.add_parser("get", help="print a key policy")
    get.add_argument("key")
    get.add_argument("-o", "--out", help="write the policy to this file instead of stdout")
    get.add_argument("--policy-name", default="default")

    put = sub.add_parser("put", help="replace a key policy from a file")
    put.add_argument("key")
    put.add_argument("-f", "--file", required=True)
    put.add_argument("--etag", help="write only if the current policy has this etag")
    put.add_argument(
        "--bypass-lockout-check",
        action="store_true",
        help="skip the lockout safety check (dangerous)",
    )
    put.add_argument("--dry-run", action="store_true", help="run every check, write nothing")

    validate = sub.add_parser("validate", help="check a policy file; exit 1 if it has errors")
    validate.add_argument("-f", "--file", required=True)
    validate.add_argument("--key", help="also run the key-specific checks (lockout, resources)")

    diff = sub.add_parser("diff", help="statement-level diff of the live policy against a file")
    diff.add_argument("key")
    diff.add_argument("-f", "--file", required=True)

    edit = sub.add_parser("edit", help="edit a policy in $EDITOR, check it, confirm, write it")
    edit.add_argument("key")
    edit.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def _client(args: argparse.Namespace) -> PolicyClientSync:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TLSConfig(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return PolicyClientSync(args.target, options=ClientOptions(timeout=args.timeout, tls=tls))


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str, out: TextIO) -> None:
    print(json.dumps(data, indent=2) if args.output == "json" else text, file=out)


def _findings_table(result: ValidationResult) -> str:
    if not result.findings:
        return "no findings"
    rows = [("SEVERITY", "CODE", "PATH", "MESSAGE")]
    rows += [(f.severity.value, f.code, f.path or "-", f.message) for f in result.findings]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows
    )


def _findings_json(result: ValidationResult) -> list[dict[str, str]]:
    return [
        {"severity": f.severity.value, "code": f.code, "path": f.path, "message": f.message}
        for f in result.findings
    ]


def cmd_get(args: argparse.Namespace, client: PolicyClientSync) -> int:
    policy = client.get_policy(args.key, args.policy_name)
    pretty = json.dumps(policy.document, indent=2) if _is_json(policy.policy) else policy.policy
    if args.out:
        Path(args.out).write_text(pretty + "\n")
        print(f"wrote {args.out} (etag {policy.etag})", file=sys.stderr)
        if args.output == "json":
            _emit(
                args,
                {"key_arn": policy.key_arn, "policy_name": policy.policy_name, "etag": policy.etag},
                "",
                sys.stdout,
            )
        return EXIT_OK
    data = {
        "key_arn": policy.key_arn,
        "policy_name": policy.policy_name,
        "etag": policy.etag,
        "policy": policy.policy,
    }
    if args.output == "text":
        print(f"# {policy.key_arn} {policy.policy_name} etag {policy.etag}", file=sys.stderr)
    _emit(args, data, pretty, sys.stdout)
    return EXIT_OK


def cmd_put(args: argparse.Namespace, client: PolicyClientSync) -> int:
    result = client.put_policy(
        args.key,
        _read(args.file),
        etag=args.etag,
        bypass_lockout_check=args.bypass_lockout_check,
        validate_only=args.dry_run,
    )
    verb = "would write" if args.dry_run else "wrote"
    data = {
        "key_arn": result.key_arn,
        "policy_name": result.policy_name,
        "etag": result.etag,
        "dry_run": args.dry_run,
    }
    _emit(
        args, data, f"{verb} {result.key_arn} {result.policy_name} (etag {result.etag})", sys.stdout
    )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, client: PolicyClientSync) -> int:
    result = client.validate_policy(_read(args.file), args.key)
    _emit(
        args,
        {"ok": result.ok, "findings": _findings_json(result)},
        _findings_table(result),
        sys.stdout,
    )
    return EXIT_OK if result.ok else EXIT_FINDINGS


def cmd_diff(args: argparse.Namespace, client: PolicyClientSync) -> int:
    live = client.get_policy(args.key)
    wanted = json.loads(_read(args.file))
    changes = statement_diff(live.document, wanted)
    data = {
        "etag": live.etag,
        "changes": [
            {"op": c.op, "name": c.name, "before": c.before, "after": c.after} for c in changes
        ],
    }
    _emit(args, data, render(changes) or "no differences", sys.stdout)
    return EXIT_FINDINGS if changes else EXIT_OK


def cmd_edit(args: argparse.Namespace, client: PolicyClientSync) -> int:
    live = client.get_policy(args.key)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="kmspolicy-", delete=False) as tmp:
        tmp.write(json.dumps(live.document, indent=2) + "\n")
        path = tmp.name
    try:
        subprocess.run([*shlex.split(editor), path], check=True)
        text = Path(path).read_text()
    finally:
        os.unlink(path)
    try:
        edited = json.loads(text)
    except ValueError as exc:
        print(f"kmspolicy: the edited policy is not JSON: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    changes = statement_diff(live.document, edited)
    if not changes:
        print("no changes", file=sys.stderr)
        return EXIT_OK
    result = client.validate_policy(text, args.key)
    if result.findings:
        print(_findings_table(result))
    if not result.ok:
        print("kmspolicy: not applied: the policy has errors", file=sys.stderr)
        return EXIT_FINDINGS
    print(render(changes))
    if not args.yes:
        print(f"apply to {live.key_arn}? [y/N] ", end="", flush=True, file=sys.stderr)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("not applied", file=sys.stderr)
            return EXIT_FINDINGS
    written = client.put_policy(args.key, text, etag=live.etag)
    print(f"wrote {written.key_arn} (etag {written.etag})", file=sys.stderr)
    return EXIT_OK


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


COMMANDS = {
    "get": cmd_get,
    "put": cmd_put,
    "validate": cmd_validate,
    "diff": cmd_diff,
    "edit": cmd_edit,
}


def _preconditions(err: errors.PolicyError) -> list[errors.PreconditionViolation]:
    """Those not already listed as violations (a guardrail's are, with their paths)."""
    if not isinstance(err, errors.GuardrailViolationError):
        return list(err.preconditions)
    return [p for p in err.preconditions if not p.type.startswith(errors.GUARDRAIL_TYPE_PREFIX)]


def report(err: errors.PolicyError, output: str) -> None:
    """One readable line, then every detail (violations with their paths, preconditions,
    quotas, the resource, when to retry); or one JSON object."""
    if output == "json":
        data: dict[str, Any] = {
            "code": err.code.name,
            "reason": err.reason,
            "message": err.message,
            "request_id": err.request_id,
            "retry_after": err.retry_after,
            "violations": [dataclasses.asdict(v) for v in err.violations],
            "preconditions": [dataclasses.asdict(p) for p in _preconditions(err)],
            "quota_violations": [dataclasses.asdict(q) for q in err.quota_violations],
            "resource": dataclasses.asdict(err.resource) if err.resource is not None else None,
        }
        if isinstance(err, errors.GuardrailViolationError):
            data["guardrails"] = list(err.guardrails)
        if isinstance(err, errors.OutOfScopeError):
            data["caller"] = err.caller
        print(json.dumps(data), file=sys.stderr)
        return
    print(f"kmspolicy: {err}", file=sys.stderr)
    if isinstance(err, errors.OutOfScopeError) and err.caller:
        print(f"  caller {err.caller}", file=sys.stderr)  # the identity the service judged
    for v in err.violations:
        where = f"{v.field} {v.path}" if v.path else v.field
        print(f"  {where}: {v.description} ({v.reason})", file=sys.stderr)
    for p in _preconditions(err):
        print(f"  precondition {p.type} {p.subject}: {p.description}", file=sys.stderr)
    for q in err.quota_violations:
        print(f"  quota {q.subject}: {q.description}", file=sys.stderr)
    if err.resource is not None:
        print(f"  resource {err.resource.type} {err.resource.name}", file=sys.stderr)
    if err.retry_after is not None:
        print(f"  retry after {err.retry_after:.1f}s", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _client(args) as client:
            return COMMANDS[args.command](args, client)
    except errors.PolicyError as err:
        report(err, args.output)
        return exit_code_for(err)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"kmspolicy: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
