"""GET /actors/search/{search_type}: Abaco's search over actors, workers, executions and logs (spec §2.11)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.queries import search
from lightabaco.http.common import call, identity_of, services_of
from lightabaco.http.envelope import ok


async def search_endpoint(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    kind = request.path_params["search_type"]
    params = dict(request.query_params.items())
    result = await call(search.search, services, identity, kind, params)
    return ok(result, "Search completed successfully.")


routes = [Route("/actors/search/{search_type}", search_endpoint, methods=["GET"])]
