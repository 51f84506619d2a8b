"""The OpenAPI document as the server really answers, and Swagger UI served from a package.

FastAPI's generated document needs two corrections: it lists a 422 on every route with
parameters, which the app never sends (validation errors are remapped to 400), and it lacks the
schemas that the routes refer to but FastAPI never sees: the inference routes read their body
raw (JSON, or the binary tensor extension) and errors are rendered by the exception handlers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed

from surety_serving.api.responses import REF_TEMPLATE, REFERENCED_MODELS

#: The status FastAPI documents for validation errors, and the schemas it adds for them.
VALIDATION_STATUS = "422"
VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

DOCS_PATH = "/docs"
SWAGGER_UI = Path(str(swagger_ui_path))
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
SWAGGER_ICON = "favicon-32x32.png"
DOCS_ASSETS = (SWAGGER_JS, SWAGGER_CSS, SWAGGER_ICON)


class SuretyAPI(FastAPI):
    """FastAPI with the corrected document."""

    def openapi(self) -> dict[str, Any]:
        """The document, built once."""
        if self.openapi_schema is None:
            self.openapi_schema = _corrected(super().openapi())
        return self.openapi_schema


def _corrected(document: dict[str, Any]) -> dict[str, Any]:
    for path in document["paths"].values():
        for operation in path.values():
            operation["responses"].pop(VALIDATION_STATUS, None)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    _, definitions = models_json_schema(
        [(model, "validation") for model in REFERENCED_MODELS], ref_template=REF_TEMPLATE
    )
    schemas.update(definitions["$defs"])
    return document


def serve_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs``, its script and styles from the swagger-ui-bundle-v2 package: the
    page loads nothing from a third party (FastAPI's own /docs and /redoc use CDNs).

    The files are routes rather than a static mount so that only what the page loads is served
    (not the bundle's demo page, which points at a third-party API) and so that requests for
    them are counted under their own endpoint label.
    """

    @app.get(DOCS_PATH, name="docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{DOCS_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{DOCS_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{DOCS_PATH}/{SWAGGER_ICON}",
            # Swagger UI would otherwise show a badge fetched from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(DOCS_PATH + "/{name}", name="docs_asset", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in DOCS_ASSETS:
            raise HTTPException(404, "Not Found")
        return FileResponse(SWAGGER_UI / name)
