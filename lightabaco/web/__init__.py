"""What people and monitoring see beside the API: the dashboard (/ui/), the API description
(/openapi.json and its page /docs), Prometheus metrics (/metrics) and the live log stream the dashboard
reads (GET /actors/{id}/executions/{eid}/logs/stream).

`middleware.WebMiddleware` serves the pages and times API requests; `logstream.routes` joins the API's
routes. Assets are plain HTML/CSS/JS files in static/, shipped as package data (no CDN).

May import: abaco, sharing, queries, protocol, config, ids (like http, beside which it sits) - never the
store or peewee (database figures for /metrics come from queries/telemetry.py), never http.
"""
