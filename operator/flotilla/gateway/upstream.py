"""Requests to the Triton pods: one pooled aiohttp ClientSession for all of them.

`RetryableError` means the attempt failed before the pod produced an answer (connection refused,
reset or closed before the response, connect timeout, 503 from the pod), so the caller may try
another endpoint: nothing reached the client yet. Anything after a 200 is final. Closing a
stream before its end closes the connection, which is how Triton learns the client left and
cancels the request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from .protocol import (
    Embedded,
    GatewayError,
    Generated,
    SseDecoder,
    parse_generated,
    parse_infer,
    upstream_error_message,
    upstream_refusal,
)
from .routing import Endpoint
from .settings import GatewaySettings

JSON_HEADERS = {"Content-Type": "application/json"}


class RetryableError(Exception):
    """The attempt failed before any answer: another endpoint may take the request. `eject`:
    the endpoint could not be connected to at all, so avoid it for a while."""

    def __init__(self, message: str, eject: bool = False) -> None:
        super().__init__(message)
        self.eject = eject


class Upstream:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}  # parsed once per endpoint and path

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop
            connector = aiohttp.TCPConnector(
                limit=0,  # no global cap: per-pod pools bound the fan-out
                limit_per_host=self.settings.pool_per_host,
                keepalive_timeout=60,
                ttl_dns_cache=None,  # pod IPs, no names to resolve
            )
            timeout = aiohttp.ClientTimeout(
                total=None,  # a long generation is fine while bytes keep coming
                sock_connect=self.settings.connect_timeout_seconds,
                sock_read=self.settings.read_timeout_seconds,
            )
            # No Accept-Encoding: aiohttp would send "gzip, deflate" by default and Triton then
            # compresses infer answers, which auto_decompress=False leaves unreadable (seen on the
            # real server: embeddings failed as "not JSON"). Pods are a LAN hop away: identity.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, endpoint: Endpoint, path: str, body: bytes) -> aiohttp.ClientResponse:
        """POST and return a 200 response with its body unread; raise RetryableError or GatewayError."""
        url = self._urls.get((endpoint.address, path))
        if url is None:
            if len(self._urls) > 4096:  # pods come and go: forget old addresses now and then
                self._urls.clear()
            url = self._urls[(endpoint.address, path)] = URL(f"http://{endpoint.address}{path}", encoded=True)
        try:
            resp = await self.session.post(url, data=body, headers=JSON_HEADERS)
        except aiohttp.ConnectionTimeoutError as err:
            raise RetryableError(f"connect to {endpoint.address} timed out", eject=True) from err
        except aiohttp.SocketTimeoutError as err:
            raise GatewayError("upstream_timeout", f"{endpoint.address} sent no answer in time") from err
        except aiohttp.ClientConnectorError as err:
            raise RetryableError(f"{endpoint.address}: {err.os_error}", eject=True) from err
        except (aiohttp.ClientConnectionError, OSError) as err:
            # Reset, or a pooled keep-alive connection the pod had closed: worth another try,
            # but no sign the pod is gone.
            raise RetryableError(f"{endpoint.address}: {type(err).__name__}: {err}") from err
        if resp.status == 200:
            return resp
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            data = b""
        finally:
            resp.release()
        if resp.status == 503:
            raise RetryableError(f"{endpoint.address} answered 503")
        if resp.status == 400:
            raise upstream_refusal(upstream_error_message(resp.status, data))
        raise GatewayError("upstream_error", upstream_error_message(resp.status, data))

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        try:
            data = await resp.read()
        except aiohttp.SocketTimeoutError as err:
            raise GatewayError("upstream_timeout", "the model stopped answering") from err
        except (aiohttp.ClientError, OSError) as err:
            raise GatewayError("upstream_error", f"the answer was cut off: {err!r}") from err
        finally:
            resp.release()
        try:
            return json.loads(data)
        except ValueError as err:
            raise GatewayError("upstream_error", "the model's answer is not JSON") from err

    async def generate(self, endpoint: Endpoint, model: str, body: bytes) -> Generated:
        resp = await self._post(endpoint, f"/v2/models/{model}/generate", body)
        return parse_generated(await self._read_json(resp))

    async def infer(self, endpoint: Endpoint, model: str, body: bytes) -> Embedded:
        resp = await self._post(endpoint, f"/v2/models/{model}/infer", body)
        return parse_infer(await self._read_json(resp))

    async def open_stream(self, endpoint: Endpoint, model: str, body: bytes) -> Stream:
        return Stream(await self._post(endpoint, f"/v2/models/{model}/generate_stream", body))


class Stream:
    """An open generate_stream response: iterate `events()`, then always `close()`."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._complete = False

    async def events(self) -> AsyncIterator[Generated]:
        decoder = SseDecoder()
        try:
            async for chunk in self._resp.content.iter_any():
                for payload in decoder.feed(chunk):
                    try:
                        event = json.loads(payload)
                    except ValueError as err:
                        raise GatewayError("upstream_error", "the model sent an event that is not JSON") from err
                    yield parse_generated(event)
        except aiohttp.SocketTimeoutError as err:
            raise GatewayError("upstream_timeout", "the model stopped streaming") from err
        except (aiohttp.ClientError, OSError) as err:
            raise GatewayError("upstream_error", f"the stream was cut off: {err!r}") from err
        self._complete = True

    def close(self) -> None:
        if self._complete:
            self._resp.release()  # at EOF: the connection goes back to the pool
        else:
            self._resp.close()  # mid-body: drop the connection so Triton cancels the request
