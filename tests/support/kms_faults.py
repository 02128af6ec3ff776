"""A KMS fault injector: an HTTP proxy in front of moto that speaks the KMS JSON protocol.

Per rule it answers a chosen KMS error (`{"__type": ..., "message": ...}` with a
status code), an HTML 500 page, a slow response, or drops the connection; every
other request goes to the real moto server. It records every request that
reached it, so tests can assert what did (and did not) reach KMS.

STS speaks the query protocol: rules name its Action (e.g. "AssumeRole"), may require
form fields (`match`, e.g. the RoleArn), answer errors as STS's XML, and "expiring"
forwards an AssumeRole and rewrites its answer's Expiration to `expires_in` seconds
from now (short-lived credentials). GetCallerIdentity is never faulted. It runs on its
own thread and event loop, so sync tests, async tests and server subprocesses
can all use it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

STS_ACTIONS = frozenset({"GetCallerIdentity", "AssumeRole"})
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_EXPIRATION = re.compile(rb"<Expiration>[^<]*</Expiration>")


@dataclass
class Rule:
    operation: str  # e.g. "PutKeyPolicy", or STS's "AssumeRole"; "*" for any KMS operation
    # "error", "html500", "sleep", "drop", "reply", "apply_then_drop",
    # "apply_then_sleep" (KMS answers, the answer arrives `delay` seconds late), "expiring" (STS)
    action: str
    error_code: str = ""
    status: int = 400
    message: str = "injected"
    delay: float = 0.0
    times: int | None = None  # None: every matching request
    body: dict[str, Any] | None = None  # for "reply": a 200 answer with this JSON
    # for "error": the code only in the X-Amzn-ErrorType header (`Code:namespace`), the
    # body a bare message, as AWS's front end answers some requests it refuses itself
    code_in_header: bool = False
    match: dict[str, str] | None = None  # request fields that must hold these values
    expires_in: float = 0.0  # for "expiring": the credentials' lifetime, seconds


@dataclass
class Seen:
    operation: str
    body: dict[str, Any]
    injected: str = ""  # the rule action applied, "" if forwarded untouched
    abandoned: bool = False  # the client went away before the answer
    access_key: str = ""  # the access key ID that signed the request
    applied: bool = False  # the upstream answered it (an "apply_then_*" answer may be late)


@dataclass
class KmsFaultInjector:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kms-faults", daemon=True)

    # -- control (any thread) -------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def operations(self) -> list[str]:
        with self._lock:
            return [s.operation for s in self.seen]

    def kms_operations(self) -> list[str]:
        return [op for op in self.operations() if op not in STS_ACTIONS]

    def requests(self, operation: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.operation == operation]

    def start(self) -> KmsFaultInjector:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(10)

    # -- the server (its own loop) -----------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        await self._stop_event.wait()
        await runner.cleanup()
        await self._session.close()

    def _match(self, operation: str, body: dict[str, Any], *, query: bool) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.operation == "*" and query:
                    continue  # "*" means any KMS operation, never STS
                if rule.match and any(body.get(k) != v for k, v in rule.match.items()):
                    continue
                if rule.operation in (operation, "*") and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                parsed = {"_raw": body.decode(errors="replace")}
        else:  # STS speaks the query protocol
            form = urllib.parse.parse_qs(body.decode())
            operation = form.get("Action", ["?"])[0]
            parsed = {k: v[0] for k, v in form.items()}
        credential = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        seen = Seen(operation, parsed, access_key=credential.group(1) if credential else "")
        with self._lock:
            self.seen.append(seen)
        query = not target
        rule = (
            self._match(operation, parsed, query=query)
            if operation != "GetCallerIdentity"
            else None
        )
        if rule is not None:
            seen.injected = rule.action
            if rule.action == "error" and query:
                return web.Response(
                    status=rule.status,
                    body=(
                        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                        f"<Error><Type>Sender</Type><Code>{rule.error_code}</Code>"
                        f"<Message>{rule.message}</Message></Error>"
                        "<RequestId>injected</RequestId></ErrorResponse>"
                    ),
                    content_type="text/xml",
                )
            if rule.action == "error" and rule.code_in_header:
                return web.Response(
                    status=rule.status,
                    body=json.dumps({"message": rule.message}),
                    content_type="application/x-amz-json-1.1",
                    headers={
                        "X-Amzn-ErrorType": f"{rule.error_code}:http://internal.amazon.com/"
                        "coral/com.amazon.coral.service/"
                    },
                )
            if rule.action == "error":
                return web.Response(
                    status=rule.status,
                    body=json.dumps({"__type": rule.error_code, "message": rule.message}),
                    content_type="application/x-amz-json-1.1",
                )
            if rule.action == "reply":
                return web.Response(
                    status=200,
                    body=json.dumps(rule.body or {}),
                    content_type="application/x-amz-json-1.1",
                )
            if rule.action == "html500":
                return web.Response(
                    status=500,
                    text="<html><body><h1>500 Internal Server Error</h1></body></html>",
                    content_type="text/html",
                )
            if rule.action == "drop":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            if rule.action == "sleep":
                # Poll the connection: a client that gives up closes it, and we note that
                # the request was abandoned at once (not when the sleep would have ended).
                end = asyncio.get_running_loop().time() + rule.delay
                while asyncio.get_running_loop().time() < end:
                    if request.transport is None or request.transport.is_closing():
                        seen.abandoned = True
                        return web.Response(status=499)
                    await asyncio.sleep(0.01)
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            seen.applied = True
            if rule is not None and rule.action == "apply_then_sleep":
                await asyncio.sleep(rule.delay)
            if rule is not None and rule.action == "apply_then_drop":
                # KMS did the work, but its answer never arrives (after `delay` seconds).
                await asyncio.sleep(rule.delay)
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            if rule is not None and rule.action == "expiring":
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                    seconds=rule.expires_in
                )
                stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
                payload = _EXPIRATION.sub(b"<Expiration>" + stamp + b"</Expiration>", payload)
            return web.Response(
                status=upstream.status,
                body=payload,
                headers={
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "x-amzn-requestid", "x-amz-request-id")
                },
            )
