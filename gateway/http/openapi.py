"""The OpenAPI document of the answering routes, which read their bodies themselves (plain
ASGI routes: FastAPI can infer nothing of them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"


def operation(
    body: type[BaseModel], answer: str, media_types: Sequence[str], **fields: Any
) -> dict[str, Any]:
    """A POST operation reading a JSON ``body``, answering in ``media_types``."""
    return {
        **fields,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body.__name__)}}},
        },
        "responses": {
            "200": {
                "description": answer,
                "content": {media_type: {} for media_type in media_types},
            }
        },
    }


def schemas(body: type[BaseModel]) -> dict[str, Any]:
    """``body``'s schema and every one it refers to, for the document's ``components``."""
    schema = body.model_json_schema(ref_template=_REF)
    return {**schema.pop("$defs", {}), body.__name__: schema}


def document(app: FastAPI, paths: dict[str, dict[str, Any]], models: dict[str, Any]) -> None:
    """Add ``paths`` (path -> operations) and their ``models`` to ``app``'s document."""
    inferred = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            found = inferred()
            found["paths"].update(paths)
            found.setdefault("components", {}).setdefault("schemas", {}).update(models)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
