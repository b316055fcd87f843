"""The Containerfile builder: `lightabaco images build` without Docker (a client of the sandbox).

`builder.build()` is the entry point; `containerfile` parses, `steps` applies instructions to a working
`tree`, `bases` makes the built-in bases, `oci_write` writes layers and OCI layouts, `podman` is the
`--engine podman` alternative, `results` holds what both engines return, `bench` measures them.

May import: the standard library, lightabaco.sandbox (RUN steps run in it) and lightabaco.images (the
store a build reads bases from and imports into). Nothing above: the CLI and the service call it.
"""
