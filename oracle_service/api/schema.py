"""The served OpenAPI document: FastAPI's, plus what FastAPI cannot see.

The comparisons body is parsed by hand (api/comparisons.py), so its schema is added here,
with this service's own batch limit as `maxItems`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from oracle_service.core.settings import Settings
from oracle_service.schemas import ComparisonRequest

REF_TEMPLATE = "#/components/schemas/{model}"


def openapi_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """Built once per app, then cached on it."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        request = ComparisonRequest.model_json_schema(ref_template=REF_TEMPLATE)
        components.update(request.pop("$defs", {}))
        request["properties"]["items"]["maxItems"] = settings.max_batch_size
        components["ComparisonRequest"] = request
        app.openapi_schema = schema
    return app.openapi_schema
