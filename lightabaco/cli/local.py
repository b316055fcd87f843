"""`lightabaco serve | token | users | doctor | images ...`: the verbs that work on this machine's home
rather than through the HTTP API."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .common import EXIT_ERROR, EXIT_OK, emit, kv, progress_for, table, version


def cmd_serve(args: argparse.Namespace) -> int:
    from lightabaco.config import Settings
    from lightabaco.server import first_run, serve

    slurm = {"slurm": True if getattr(args, "slurm", False) else None,
             "slurm_partition": getattr(args, "partition", None), "slurm_account": getattr(args, "account", None),
             "slurm_time_limit": getattr(args, "time_limit", None), "slurm_max_jobs": getattr(args, "max_jobs", None)}
    settings = Settings.from_env(home=args.home, host=args.host, port=args.port, workers=args.workers,
                                 backend=args.backend, auth=args.auth, **slurm)
    token = first_run(settings)
    if not args.no_samples:
        _ensure_samples(settings.images_dir, settings.home / "build-cache", args)
    base = f"http://{settings.host}:{settings.port}"
    print(f"lightabaco {version()} serving on {base} (home {settings.home}, {settings.workers} workers)",
          file=args.err)
    if token:
        print("Paste this into another shell to use the walkthrough:", file=args.err)
        print(f"export BASE={base}\nexport TOKEN={token}", file=args.out)
    else:
        print(f"export BASE={base}   # --auth none: no token needed", file=args.out)
    args.out.flush()
    serve(settings)
    return EXIT_OK


def _ensure_samples(images_dir: Path, cache_dir: Path, args: argparse.Namespace) -> None:
    from .samples import ensure_samples
    from lightabaco.sandbox.errors import SandboxError
    from lightabaco.images import ImageStore

    store = ImageStore(images_dir)
    progress = progress_for(args)
    started = time.monotonic()
    if not (cache_dir / "builds").is_dir():
        print("building the sample images (first run only: about a minute, the Python ones need a small "
              "Debian base)...", file=args.err)
    try:
        ensure_samples(store, progress, cache_dir=cache_dir)
    except SandboxError as exc:
        # The Python samples need a Debian mirror once; the shell samples never do. Serve anyway.
        print(f"\nlightabaco: could not build every sample image ({exc}); continuing with the busybox ones",
              file=args.err)
        try:
            ensure_samples(store, progress, cache_dir=cache_dir, python=False)
        except SandboxError as inner:
            print(f"lightabaco: sample images unavailable: {inner}", file=args.err)
    finally:
        if progress:
            progress.close()
    elapsed = time.monotonic() - started
    if elapsed > 1:
        print(f"sample images ready in {elapsed:.1f} s (cached for next time)", file=args.err)


def cmd_token(args: argparse.Namespace) -> int:
    from .users import run_token

    return run_token(args, args.home, out=args.out, err=args.err)


def cmd_users(args: argparse.Namespace) -> int:
    from .users import run_users

    return run_users(args, args.home, out=args.out, err=args.err)


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    checks = doctor.run_checks(args.home)
    emit(args, doctor.as_dicts(checks), lambda: print(doctor.render(checks), file=args.out))
    return EXIT_ERROR if any(c.status == "fail" for c in checks) else EXIT_OK


# -- images (local, through the image store) ------------------------------------------------------------

def _store(args: argparse.Namespace) -> Any:
    from lightabaco.config import Settings
    from lightabaco.images import open_image_store

    return open_image_store(Settings.from_env(home=args.home))


def _images_in_use(home: Path) -> set[str]:
    """The images of every actor in this home's database (they are never pruned)."""
    from lightabaco.config import Settings
    from lightabaco.store.db import connect
    from lightabaco.store.models import Actor

    settings = Settings.from_env(home=home)
    if not settings.database_url and not (home / "lightabaco.db").exists():
        return set()
    connect(settings)  # upgrades an older database's schema, as the server does at start
    used = set()
    for row in Actor.select(Actor.image, Actor.image_digest):
        used.add(row.image)
        if row.image_digest:
            used.add(row.image_digest)
    return used


def cmd_images(args: argparse.Namespace) -> int:
    store = _store(args)
    progress = progress_for(args)
    data: Any
    try:
        if args.images_cmd == "list":
            rows = store.list()

            def human() -> None:
                table([{**r, "reference": r.get("reference") or "<none>", "id": (r.get("id") or "")[7:19],
                        "size": _mb(r.get("size"))} for r in rows],
                      [("reference", "REFERENCE"), ("id", "IMAGE ID"), ("size", "SIZE"), ("source", "SOURCE")],
                      args.out)
                unnamed = sum(r.get("size") or 0 for r in rows if not r.get("reference"))
                print(f"{_mb(store.disk_usage())} on disk in {store.root}"
                      + (f"; `lightabaco images prune` frees about {_mb(unnamed)} of <none> images" if unnamed
                         else ""), file=args.out)

            emit(args, rows, human)
        elif args.images_cmd == "import":
            images = store.import_path(Path(args.path), tag=args.tag, progress=progress)
            data = [{"reference": i.reference, "id": i.config_digest} for i in images]
            emit(args, data, lambda: [print(f"imported {d['reference'] or '(unnamed)'} {d['id'][:19]}",
                                             file=args.out) for d in data])
        elif args.images_cmd == "pull":
            image = store.pull(args.ref, insecure=args.insecure, username=args.username,
                               password=os.environ.get("LIGHTABACO_REGISTRY_PASSWORD") if args.username else None,
                               progress=progress)
            data = {"reference": image.reference, "id": image.config_digest}
            emit(args, data, lambda: print(f"pulled {image.reference} {image.config_digest[:19]}", file=args.out))
        elif args.images_cmd == "build":
            from lightabaco.build.builder import build

            replaced = _image_id(store, args.tag) if args.tag else None
            result = build(Path(args.dir), store, cache_dir=args.home / "build-cache", tag=args.tag,
                           file=args.file, build_args=kv(args.build_arg, "--build-arg"), network=args.network,
                           engine=args.engine, progress=progress, no_cache=args.no_cache)
            data = {"reference": result.image.reference, "id": result.config_digest, "cached": result.cached,
                    "seconds": round(result.seconds, 3)}
            emit(args, data, lambda: print(
                f"built {args.tag or '(untagged)'} {result.config_digest[:19]} in {result.seconds:.1f} s"
                + (" (cached)" if result.cached else ""), file=args.out))
            if replaced and replaced != result.config_digest and not args.json:
                size = next((r.get("size") for r in store.list() if r.get("id") == replaced), None)
                print(f"the image {args.tag} named before ({replaced[7:19]}, {_mb(size) or 'size unknown'}) "
                      "stays on disk until `lightabaco images prune`", file=args.err)
        elif args.images_cmd == "rm":
            removed = store.remove(args.ref)
            emit(args, {"removed": args.ref, "id": removed}, lambda: print(f"removed {args.ref}", file=args.out))
        elif args.images_cmd == "prune":
            from lightabaco.build.cache import StepCache

            data = store.prune(_images_in_use(args.home), dry_run=args.dry_run)
            data["step_cache_bytes"] = 0 if args.dry_run else StepCache(args.home / "build-cache").prune()
            emit(args, data, lambda: print(
                f"{'would remove' if args.dry_run else 'removed'} {len(data['removed'])} image name(s)"
                + "".join(f"\n  {r}" for r in data["removed"])
                + f"\nfreed {_mb(data['freed_bytes'])} of images and {_mb(data['step_cache_bytes'])} of cached "
                "build steps", file=args.out))
        elif args.images_cmd == "samples":
            from .samples import ensure_samples

            results = ensure_samples(store, progress, cache_dir=args.home / "build-cache", python=not args.no_python)
            data = {tag: {"id": r.config_digest, "cached": r.cached} for tag, r in results.items()}
            emit(args, data, lambda: [print(f"{tag:28} {d['id'][:19]}{'  (cached)' if d['cached'] else ''}",
                                             file=args.out) for tag, d in data.items()])
    finally:
        if progress:
            progress.close()
    return EXIT_OK


def _image_id(store: Any, ref: str) -> str | None:
    try:
        return store.get(ref).config_digest
    except Exception:  # ImageNotFound or an invalid name: nothing is replaced
        return None


def _mb(size: Any) -> str:
    return f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else ""
