"""The sandbox runtime: run one execution of an unpacked image without Docker or root.

Backends (`bwrap`, `podman`, chosen in `backend`), the per-execution contract (`execution`: launch, limits,
kill, wait; `channels`: binary message, results socket, logs; `scratch`: the per-execution directory;
`procstats`, `rlimit_helper`, `seccomp`, `users`, `outcome`), the host probe (`probe`), the shared types
and errors (`types`, `errors`), filesystem helpers (`fsutil`, `safepath`: the one chroot-safe,
fd-relative path walker of the unpacker and the builder) and its benchmark (`bench`).

May import: the standard library and zstandard only. It is a library of its own, usable and testable
without the rest of lightabaco; the image store (lightabaco.images) and the builder (lightabaco.build)
are its clients.
"""
