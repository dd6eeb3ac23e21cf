"""Readiness, liveness and startup probes (httpGet, tcpSocket, exec), as the kubelet runs them.

`ProbeTracker` applies thresholds (pure); `check` performs one probe against the pod's
address. gRPC probes are not supported: they fail with a message saying so, rather than
pass silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
USER_AGENT = "kube-probe/1.34"


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # readiness | liveness | startup
    spec: Obj

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds") or 0)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold") or 1)

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold") or 3)


@dataclass
class ProbeTracker:
    """Consecutive results -> the probe's verdict. Readiness and startup start failed,
    liveness starts passed (the kubelet's initial results)."""

    success_threshold: int
    failure_threshold: int
    result: bool
    successes: int = 0
    failures: int = 0

    @classmethod
    def for_probe(cls, probe: ProbeSpec) -> ProbeTracker:
        return cls(probe.success_threshold, probe.failure_threshold, result=probe.kind == "liveness")

    def observe(self, ok: bool) -> bool:
        """Record one result; True when the verdict changed."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            flip = not self.result and self.successes >= self.success_threshold
        else:
            self.failures, self.successes = self.failures + 1, 0
            flip = self.result and self.failures >= self.failure_threshold
        if flip:
            self.result = not self.result
        return flip


def resolve_port(port: int | str, container: Obj) -> int:
    """A port number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container.get('name')}")


async def http_get(action: Obj, pod_ip: str, container: Obj, timeout: float) -> tuple[bool, str]:
    host = action.get("host") or pod_ip
    port = resolve_port(action["port"], container)
    path = action.get("path") or "/"
    scheme = (action.get("scheme") or "HTTP").upper()
    context: ssl.SSLContext | None = None
    if scheme == "HTTPS":  # the kubelet does not verify probe certificates either
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
    headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"

    async def one() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            writer.write(request.encode())
            await writer.drain()
            line = (await reader.readline()).decode(errors="replace").strip()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        parts = line.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if 200 <= code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {code}" if code else f"bad HTTP response {line!r}"

    try:
        return await asyncio.wait_for(one(), timeout)
    except TimeoutError:
        return False, f'Get "{scheme.lower()}://{host}:{port}{path}": context deadline exceeded'
    except OSError as err:
        return False, f'Get "{scheme.lower()}://{host}:{port}{path}": {err.strerror or err}'


async def tcp_socket(action: Obj, pod_ip: str, container: Obj, timeout: float) -> tuple[bool, str]:
    host = action.get("host") or pod_ip
    port = resolve_port(action["port"], container)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as err:
        return False, f"dial tcp {host}:{port}: {err.strerror or err}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def run_exec(argv: Sequence[str], env: Mapping[str, str], cwd: str, timeout: float) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        return False, f"exec {argv[0]}: {err}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"command timed out after {timeout:g}s"
    if proc.returncode == 0:
        return True, ""
    text = out.decode(errors="replace").strip()[-512:]
    return False, f"command exited with {proc.returncode}: {text}"


ExecProbe = Callable[[list[str], float], Awaitable[tuple[bool, str]]]


async def check(
    probe: ProbeSpec,
    pod_ip: str,
    container: Obj,
    exec_probe: ExecProbe,
) -> tuple[bool, str]:
    """One probe attempt: (passed, failure message)."""
    spec = probe.spec
    if action := spec.get("httpGet"):
        return await http_get(action, pod_ip, container, probe.timeout)
    if action := spec.get("tcpSocket"):
        return await tcp_socket(action, pod_ip, container, probe.timeout)
    if action := spec.get("exec"):
        return await exec_probe(list(action.get("command") or []), probe.timeout)
    if "grpc" in spec:
        return False, "gRPC probes are not supported by the process node"
    return False, "probe has no handler"
