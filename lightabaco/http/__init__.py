"""The HTTP edge: Starlette routes, request parsing, the Abaco envelope, case conversion.

May import: lightabaco.abaco, lightabaco.sharing, lightabaco.queries, lightabaco.protocol, lightabaco.config
and starlette. Never the store (no peewee models at the edge) and never automation (it hears the
lifecycle's events, it is not called by requests).
"""
