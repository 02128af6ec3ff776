"""aiohttp is imported without the CA stores of its two default SSL contexts (which
the service never uses), and every context the service does use still verifies."""

from __future__ import annotations

import json
import subprocess
import sys


def in_fresh_interpreter(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", f"import json\n{code}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_aiohttps_default_contexts_hold_no_ca_store_and_fail_closed() -> None:
    found = in_fresh_interpreter(
        "import ssl, kms_policy_service.kms, aiohttp.connector as c\n"
        "v = c._SSL_CONTEXT_VERIFIED\n"
        "print(json.dumps({'cas': v.cert_store_stats()['x509_ca'],"
        " 'required': v.verify_mode == ssl.CERT_REQUIRED, 'hostname': v.check_hostname,"
        " 'unverified_cas': c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()['x509_ca']}))"
    )
    assert found == {"cas": 0, "required": True, "hostname": True, "unverified_cas": 0}


def test_the_stdlib_loads_default_ca_paths_again_after_the_import() -> None:
    found = in_fresh_interpreter(
        "import ssl, kms_policy_service.kms\n"
        "print(json.dumps({'cas': ssl.create_default_context().cert_store_stats()['x509_ca']}))"
    )
    assert isinstance(found["cas"], int) and found["cas"] > 0


def test_the_kms_clients_tls_context_still_loads_botocores_ca_bundle() -> None:
    found = in_fresh_interpreter(
        "import kms_policy_service.kms\n"
        "from aiobotocore.httpsession import AIOHTTPSession\n"
        "ctx = AIOHTTPSession(verify=True)._build_verify_context()\n"
        "print(json.dumps({'cas': ctx.cert_store_stats()['x509_ca'], 'mode': int(ctx.verify_mode)}))"
    )
    assert isinstance(found["cas"], int) and found["cas"] > 0
    assert found["mode"] == 2  # ssl.CERT_REQUIRED
