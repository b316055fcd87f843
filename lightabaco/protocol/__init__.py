"""Abaco's vocabulary, shared by the lifecycle, sharing and HTTP: `errors` (AbacoError and its kinds,
each with the HTTP status Abaco answers), `fields` (request field parsing, camelCase/snake_case),
`serialize` (times and cases as Abaco displays them).

A folder of its own, below both sharing and the lifecycle, because both use it (sharing's permission
fields, the lifecycle's actor fields): in either of them it would make the two import each other.
May import: the standard library only.
"""
