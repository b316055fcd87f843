"""A pull process: fetches one actor's image, outside the worker slots that run executions.

    python -m lightabaco.workers.puller --home DIR --worker-id W --actor TENANT_ID --revision N

The supervisor starts one for a REQUESTED worker whose image is not in the local store, within its own
caps (`pull_concurrency`, `pull_concurrency_per_user`), and kills it at the pull deadline. Pulls made
here are for API users, so the registry address policy and the pull limits of the settings apply
(the owner's `lightabaco images pull` uses the library's unrestricted default instead).

Exit status: 0 the image is in the store (the supervisor then starts the worker); EXIT_IMAGE the
pull failed and the actor is in ERROR with the reason.
"""

from __future__ import annotations

from lightabaco.workers import lineage

if __name__ == "__main__":  # first, before the slow imports: see lineage.py
    lineage.tie_to_parent()

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from lightabaco.config import Settings
from lightabaco.images.registry import PullLimits, pull_options
from lightabaco.sandbox.netpolicy import AddressPolicy, parse_hosts

log = logging.getLogger("lightabaco.puller")


def registry_policy(settings: Settings) -> AddressPolicy:
    """Which registries pulls for API users may contact (see the `outbound` settings)."""
    return AddressPolicy(allow_private=settings.registry_allow_private,
                         allowed_hosts=parse_hosts(settings.registry_allowed_hosts),
                         setting_hint="LIGHTABACO_REGISTRY_ALLOWED_HOSTS (the registry's host:port) or "
                         "LIGHTABACO_REGISTRY_ALLOW_PRIVATE")


def pull_limits(settings: Settings) -> PullLimits:
    return PullLimits(deadline_s=settings.pull_timeout_s, read_timeout_s=settings.pull_read_timeout_s,
                      connect_timeout_s=min(10.0, settings.pull_read_timeout_s),
                      min_rate_bytes_s=settings.pull_min_rate_bytes_s,
                      rate_grace_s=min(30.0, settings.pull_timeout_s / 4),
                      max_image_bytes=settings.pull_max_image_bytes)


def pull_for_actor(services: Any, image: str) -> Any:
    """Ensure `image` is in the store, pulling it under the settings' policy and limits."""
    settings = services.settings
    with pull_options(registry_policy(settings), pull_limits(settings)):
        return services.images.ensure(image)


def main(argv: list[str] | None = None) -> int:
    from lightabaco.abaco.services import Services
    from lightabaco.store import db
    from lightabaco.store.models import Actor
    from lightabaco.workers.notify import DoorbellNotifier
    from lightabaco.workers.worker import EXIT_IMAGE, EXIT_OK, die_with_parent, image_error

    parser = argparse.ArgumentParser(prog="python -m lightabaco.workers.puller")
    parser.add_argument("--home", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--actor", required=True, help="actor dbid, {tenant}_{id}")
    parser.add_argument("--revision", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings.from_env(home=Path(args.home))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s puller {args.worker_id} %(levelname)s %(message)s")
    db.connect(settings, create=False)
    services = Services(settings, notifier=DoorbellNotifier(settings.home))
    actor = Actor.get_or_none(Actor.dbid == args.actor)
    if actor is None or actor.revision != args.revision:
        return EXIT_OK  # gone or replaced meanwhile: the supervisor drops the worker row
    try:
        pull_for_actor(services, actor.image)
    except Exception as exc:
        _count("image_pull_failures")  # read by /metrics (queries/telemetry.py)
        image_error(services, actor, args.revision, args.worker_id, exc)
        return EXIT_IMAGE
    _count("image_pulls")
    return EXIT_OK


def _count(name: str) -> None:
    """One more in the store's Counter table; a failure to count never fails the pull."""
    from lightabaco.store.models import Counter

    try:
        Counter.insert(name=name, value=1).on_conflict(
            conflict_target=[Counter.name], update={Counter.value: Counter.value + 1}).execute()
    except Exception as exc:
        log.warning("could not count %s: %s", name, exc)


if __name__ == "__main__":
    sys.exit(main())
