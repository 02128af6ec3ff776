"""PolicyClient (asyncio) and PolicyClientSync: the same calls, the same plans, two transports."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc
from grpc_status import rpc_status

from kms_policy_client import _core
from kms_policy_client._core import DEFAULT_UPDATE_ATTEMPTS, Call, Plan, PolicyText
from kms_policy_client._errors import PolicyError, from_status
from kms_policy_client._options import DEFAULT_TARGET, ClientOptions
from kms_policy_client._results import Policy, PutResult, ValidationResult
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

__all__ = ["PolicyClient", "PolicyClientSync"]


class PolicyClient:
    """Async client: `async with PolicyClient("127.0.0.1:50051") as client: ...`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        options: ClientOptions | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        if channel is None:
            args = self.options.channel_options()
            if self.options.tls is not None:
                channel = grpc.aio.secure_channel(
                    target, self.options.tls.credentials(), options=args
                )
            else:
                channel = grpc.aio.insecure_channel(target, options=args)
        self._channel = channel
        self._stub = pb_grpc.PolicyServiceStub(channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, call: Call, timeout: float | None) -> Any:
        method = getattr(self._stub, call.method)
        rpc = method(call.request, timeout=timeout or self.options.timeout)
        try:
            return await rpc
        except grpc.aio.AioRpcError as exc:
            # On aio calls the status lives on the call object: rpc_status.aio.from_call.
            status = await rpc_status.aio.from_call(rpc)
            raise from_status(exc.code(), exc.details() or "", status) from exc

    async def _drive(self, plan: Plan, timeout: float | None) -> Any:
        call = next(plan)
        while True:
            error: PolicyError | None = None
            result: Any = None
            try:
                result = await self._call(call, timeout)
            except PolicyError as exc:
                error = exc  # the plan may handle it (update_policy: ETAG_MISMATCH)
            try:
                call = plan.throw(error) if error is not None else plan.send(result)
            except StopIteration as done:
                return done.value

    async def get_policy(
        self, key_id: str, policy_name: str = "default", *, timeout: float | None = None
    ) -> Policy:
        reply = await self._call(
            Call("GetKeyPolicy", _core.get_request(key_id, policy_name)), timeout
        )
        return _core.to_policy(reply)

    async def put_policy(
        self,
        key_id: str,
        policy: PolicyText,
        *,
        etag: str | None = None,
        bypass_lockout_check: bool = False,
        validate_only: bool = False,
        policy_name: str = "default",
        timeout: float | None = None,
    ) -> PutResult:
        request = _core.put_request(
            key_id,
            policy,
            policy_name=policy_name,
            etag=etag,
            bypass_lockout_check=bypass_lockout_check,
            validate_only=validate_only,
        )
        return _core.to_put_result(await self._call(Call("PutKeyPolicy", request), timeout))

    async def list_policies(
        self, key_id: str, *, page_size: int = 0, timeout: float | None = None
    ) -> list[str]:
        names: list[str] = await self._drive(_core.list_plan(key_id, page_size), timeout)
        return names

    async def validate_policy(
        self,
        policy: PolicyText,
        key_id: str | None = None,
        *,
        policy_name: str = "default",
        timeout: float | None = None,
    ) -> ValidationResult:
        request = _core.validate_request(policy, key_id, policy_name)
        return _core.to_validation(await self._call(Call("ValidateKeyPolicy", request), timeout))

    async def update_policy(
        self,
        key_id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        policy_name: str = "default",
        attempts: int = DEFAULT_UPDATE_ATTEMPTS,
        timeout: float | None = None,
    ) -> PutResult:
        """Read-modify-write guarded by the etag, re-read and retried on a concurrent change."""
        plan = _core.update_plan(key_id, fn, policy_name=policy_name, attempts=attempts)
        result: PutResult = await self._drive(plan, timeout)
        return result


class PolicyClientSync:
    """The blocking twin of PolicyClient: `with PolicyClientSync(target) as client: ...`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        options: ClientOptions | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        if channel is None:
            args = self.options.channel_options()
            if self.options.tls is not None:
                channel = grpc.secure_channel(target, self.options.tls.credentials(), options=args)
            else:
                channel = grpc.insecure_channel(target, options=args)
        self._channel = channel
        self._stub = pb_grpc.PolicyServiceStub(channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> PolicyClientSync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, call: Call, timeout: float | None) -> Any:
        method = getattr(self._stub, call.method)
        try:
            return method(call.request, timeout=timeout or self.options.timeout)
        except grpc.RpcError as exc:
            status = rpc_status.from_call(exc)
            raise from_status(exc.code(), exc.details() or "", status) from exc

    def _drive(self, plan: Plan, timeout: float | None) -> Any:
        call = next(plan)
        while True:
            error: PolicyError | None = None
            result: Any = None
            try:
                result = self._call(call, timeout)
            except PolicyError as exc:
                error = exc  # the plan may handle it (update_policy: ETAG_MISMATCH)
            try:
                call = plan.throw(error) if error is not None else plan.send(result)
            except StopIteration as done:
                return done.value

    def get_policy(
        self, key_id: str, policy_name: str = "default", *, timeout: float | None = None
    ) -> Policy:
        return _core.to_policy(
            self._call(Call("GetKeyPolicy", _core.get_request(key_id, policy_name)), timeout)
        )

    def put_policy(
        self,
        key_id: str,
        policy: PolicyText,
        *,
        etag: str | None = None,
        bypass_lockout_check: bool = False,
        validate_only: bool = False,
        policy_name: str = "default",
        timeout: float | None = None,
    ) -> PutResult:
        request = _core.put_request(
            key_id,
            policy,
            policy_name=policy_name,
            etag=etag,
            bypass_lockout_check=bypass_lockout_check,
            validate_only=validate_only,
        )
        return _core.to_put_result(self._call(Call("PutKeyPolicy", request), timeout))

    def list_policies(
        self, key_id: str, *, page_size: int = 0, timeout: float | None = None
    ) -> list[str]:
        names: list[str] = self._drive(_core.list_plan(key_id, page_size), timeout)
        return names

    def validate_policy(
        self,
        policy: PolicyText,
        key_id: str | None = None,
        *,
        policy_name: str = "default",
        timeout: float | None = None,
    ) -> ValidationResult:
        request = _core.validate_request(policy, key_id, policy_name)
        return _core.to_validation(self._call(Call("ValidateKeyPolicy", request), timeout))

    def update_policy(
        self,
        key_id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        policy_name: str = "default",
        attempts: int = DEFAULT_UPDATE_ATTEMPTS,
        timeout: float | None = None,
    ) -> PutResult:
        """Read-modify-write guarded by the etag, re-read and retried on a concurrent change."""
        plan = _core.update_plan(key_id, fn, policy_name=policy_name, attempts=attempts)
        result: PutResult = self._drive(plan, timeout)
        return result
