"""Exceptions raised by the sandbox library. Each message says what went wrong and what to do next."""


class SandboxError(Exception):
    """Base class for every error the sandbox library raises."""


class ImageError(SandboxError):
    """An image is malformed, hostile, unsupported, or fails verification (names the bad entry)."""


class ImageNotFound(ImageError):
    """No image by that reference in the local store (and none could be pulled)."""


class RegistryError(ImageError):
    """A registry refused, could not be reached, or answered something we cannot use."""


class RegistryAuthError(RegistryError):
    """The registry wants credentials we do not have, or rejected the ones we sent."""


class BackendUnavailable(SandboxError):
    """The chosen backend cannot run on this host (the message says why and how to fix it)."""


class ExecutionSetupError(SandboxError):
    """The sandbox for one execution could not be set up."""
