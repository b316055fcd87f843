"""The API description covers every route the app registers under /actors, and validates as OpenAPI 3.1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.routing import Route

from lightabaco.web import openapi


def spec_validator():
    """openapi-spec-validator's entry point: `validate` from 0.7 on, `validate_spec` before (0.5 and 0.6
    are what tapipy's openapi-core allows)."""
    module = pytest.importorskip("openapi_spec_validator")
    return getattr(module, "validate", None) or module.validate_spec


@pytest.fixture(scope="module")
def app_routes() -> list:
    from lightabaco.http import app as app_mod
    from lightabaco.http import (routes_actors, routes_admin, routes_executions, routes_messages,
                                 routes_search, routes_sharing, routes_workers)
    from lightabaco.web import logstream

    assert app_mod  # the same modules create_app registers
    return (routes_admin.routes + routes_search.routes + routes_sharing.routes + routes_actors.routes
            + routes_messages.routes + routes_executions.routes + routes_workers.routes + logstream.routes)


def test_every_registered_route_has_a_row(app_routes: list) -> None:
    registered = set(openapi.api_routes(app_routes))
    assert len(registered) > 40
    missing = sorted(registered - set(openapi.OPERATIONS))
    assert not missing, f"describe these in lightabaco/web/openapi.py OPERATIONS: {missing}"
    stale = sorted(set(openapi.OPERATIONS) - registered)
    assert not stale, f"OPERATIONS describes routes that do not exist: {stale}"


def test_create_app_registers_what_the_test_lists(app_routes: list, tmp_path) -> None:
    """The list above is the app's: build the real app and compare its router's routes."""
    from lightabaco.http.app import create_app
    from lightabaco.config import Settings

    services = SimpleNamespace(settings=Settings.from_env(environ={}, home=tmp_path))
    app = create_app(services, waiter=SimpleNamespace(start=lambda: None, stop=lambda: None))
    assert set(openapi.api_routes(app.routes)) == set(openapi.api_routes(app_routes))


def test_a_new_route_is_flagged_undocumented() -> None:
    async def nothing(request):  # pragma: no cover - never called
        return None

    doc = openapi.build([Route("/actors/{actor_id}/brand-new", nothing, methods=["GET"])], "t")
    op = doc["paths"]["/actors/{actor_id}/brand-new"]["get"]
    assert op["x-undocumented"] is True
    assert op["parameters"][0] == {"name": "actor_id", "in": "path", "required": True, "schema": {"type": "string"}}


def test_document_validates(app_routes: list) -> None:
    validate = spec_validator()

    doc = openapi.build(app_routes, "1.0")
    validate(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert doc["paths"]["/actors/{actor_id}/messages"]["post"]["requestBody"]["content"][
        "application/octet-stream"]["schema"]["format"] == "binary"
