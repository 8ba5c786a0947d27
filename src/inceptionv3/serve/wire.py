"""What requests and answers are made of, with no web framework: the error a route raises, an uploaded image,
strict JSON, and the v1 JSON body. Both the v1 and the v2 routes use them, so neither
imports the other for them."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An answer other than 200: its status, message and headers (the app turns it into JSON)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Upload:
    """One image of a request: a name for messages and its encoded bytes."""

    name: str
    data: bytes


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_uploads(data: bytes, max_files: int) -> tuple[list[Upload], dict[str, Any], bool]:
    """A v1 JSON body, ``{"inputs": <base64> or [<base64>, ...], "parameters": {...}}``: its images, parameters, and
    whether it was a list. The item count is checked before any image is decoded."""
    payload = parse_json(data, "body")
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise ApiError(422, 'JSON body must be {"inputs": <base64 image> or [<base64 image>, ...]}')
    inputs = payload["inputs"]
    many = isinstance(inputs, list)
    items = inputs if many else [inputs]
    if not items or len(items) > max_files:
        raise ApiError(422, f"inputs must hold 1 to {max_files} images, got {len(items)}")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(422, "parameters must be an object")
    uploads = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(422, f"inputs[{i}] must be a base64 string")
        try:
            uploads.append(Upload(f"<inputs[{i}]>", base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(422, f"inputs[{i}] is not valid base64") from None
    return uploads, parameters, many


def parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: NaN and Infinity are not JSON, and nesting deep enough to exhaust the parser is a 422 too."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    try:
        return json.loads(data, parse_constant=refuse)
    except RecursionError:
        raise ApiError(422, f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"{what} is not valid JSON ({short(str(exc))})") from None


__all__ = ["ApiError", "Upload", "json_uploads", "parse_json", "short"]
