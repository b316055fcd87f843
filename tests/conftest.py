"""Shared fixtures. Each area keeps its fixtures in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.oci",       # OCI layout writer, tiny static actor, busybox images, image store
    "tests.fixtures.registry",  # Debian's docker-registry on loopback (anonymous, basic and token auth)
    "tests.fixtures.sandbox",   # backends, a non-root user for running the sandbox unprivileged
    "tests.fixtures.server",    # a live lightabaco server (uvicorn on a free port, SQLite, bwrap)
    "tests.fixtures.users",     # multi-user tokens and roles against a live server
    "tests.fixtures.samples",   # the sample actor images from images/
    "tests.fixtures.postgres",  # a throwaway PostgreSQL cluster (initdb in a temp dir), databases per test
    "tests.fixtures.slurm",     # a one-node Slurm cluster (slurmctld, slurmd, munged in a temp dir), root only
]
