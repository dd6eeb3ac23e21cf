"""Talking to a served model the way an in-cluster client would, minus kube-proxy: the
Service's ready endpoints from its EndpointSlices, then Triton's generate endpoint."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def ready_endpoints(slices: dict[str, Any], port_name: str = "http") -> list[str]:
    """http://ip:port of every ready endpoint in an EndpointSliceList."""
    urls = []
    for item in slices.get("items", []):
        port = next((p["port"] for p in item.get("ports") or [] if p.get("name") == port_name), None)
        for endpoint in item.get("endpoints") or []:
            if port and endpoint.get("conditions", {}).get("ready"):
                urls += [f"http://{address}:{port}" for address in endpoint["addresses"]]
    return urls


def generate(url: str, model: str, prompt: str, max_tokens: int = 32, timeout: float = 120) -> str:
    """POST /v2/models/<model>/generate (Triton's generate extension); the text answer."""
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/generate", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(json.loads(response.read())["text_output"])
