"""The HTTP edge: Starlette routes, request parsing, the Abaco envelope, case conversion."""
