"""The command line: `lightabaco` (entry point `lightabaco.cli.commands:main`, also `python -m lightabaco`).

`commands` (the parser and the verbs that talk to a server), `client` (the HTTP client, httpx), `local`
(verbs that work on the home directly: serve, images, users, doctor), `common` (home, output helpers),
`users` (`lightabaco users ...`), `progress` (progress bars), `doctor` (host checks), `samples` (the
sample images).

May import: every other folder (it is the top, beside server.py): the HTTP API through `client`, the
server entry point, the sandbox, image store and builder for local image work, the sharing rules for
users and tokens.
"""

from lightabaco.cli.commands import main

__all__ = ["main"]
