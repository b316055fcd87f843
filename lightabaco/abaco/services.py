"""The services container: what every core call needs (settings, image store, notifier, clock)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lightabaco.config import Settings


class Notifier(Protocol):
    """Wake-ups on top of the database (the database stays the source of truth)."""

    def wake_actor(self, actor_dbid: str) -> None: ...

    def wake_worker(self, worker_id: str, payload: bytes = b"w") -> None: ...

    def wake_supervisor(self) -> None: ...

    def execution_event(self, execution_dbid: str) -> None: ...


class NullNotifier:
    """Used when nothing listens (unit tests, one-shot commands): every wake-up is a no-op."""

    def wake_actor(self, actor_dbid: str) -> None:
        pass

    def wake_worker(self, worker_id: str, payload: bytes = b"w") -> None:
        pass

    def wake_supervisor(self) -> None:
        pass

    def execution_event(self, execution_dbid: str) -> None:
        pass


class Services:
    def __init__(self, settings: "Settings", notifier: Notifier | None = None,
                 images: Any = None, backend: Any = None) -> None:
        self.settings = settings
        self.notifier: Notifier = notifier or NullNotifier()
        self._images = images
        self._backend = backend
        # Process-wide state the health check reports (set by the server and the supervisor).
        self.draining = False  # SIGTERM received: no new messages are accepted
        self.backend_error = ""  # why no sandbox backend can run here ("" = none known)
        self.pool_size = 0  # worker processes this process's supervisor may run (0: no supervisor here)

    @property
    def tenant(self) -> str:
        return self.settings.tenant

    @property
    def images(self) -> Any:
        """The sandbox image store (created on first use: the API alone may never need it)."""
        if self._images is None:
            from lightabaco.images import open_image_store

            self._images = open_image_store(self.settings)
        return self._images

    @property
    def backend(self) -> Any:
        if self._backend is None:
            from lightabaco.sandbox.backend import get_backend

            self._backend = get_backend(self.settings.backend, scratch=self.settings.exec_dir)
        return self._backend

    def now(self) -> float:
        return time.time()
