"""The exception hierarchy of the reference project, and the daemon's ErrorKind mapped onto it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ._models import ExecutionResult


class SandboxError(Exception):
    """Base of every error this package raises.

    ``kind`` is the daemon's ErrorKind number (0 when the client itself found the problem) and
    ``transient`` whether the same call may succeed if retried.
    """

    transient = False

    def __init__(self, message: str, *, kind: int = 0, transient: Optional[bool] = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        if transient is not None:
            self.transient = transient


class TransientError(SandboxError):
    """Retrying the same call may succeed (capacity, boot timeout, a crashed VM or daemon)."""

    transient = True


class PermanentError(SandboxError):
    """Retrying the same call will fail the same way (bad input, configuration, policy)."""

    transient = False


class VmTimeoutError(TransientError):
    """The VM did not boot in time, or the code ran past its timeout.

    For an execution timeout ``result`` holds what the code printed before it was stopped.
    """

    def __init__(self, message: str, *, kind: int = 0, transient: Optional[bool] = None,
                 result: Optional["ExecutionResult"] = None) -> None:
        super().__init__(message, kind=kind, transient=transient)
        self.result = result


class VmCapacityError(TransientError):
    """Every VM slot stayed busy for longer than the queue wait."""


class VmConfigError(PermanentError):
    """The request or the configuration breaks a limit or names something unknown."""


class NotSupportedError(VmConfigError):
    """The request asks for a feature this version of the daemon does not have yet
    (packages, network, exposed ports, the S3 cache)."""


class SessionClosedError(PermanentError):
    """The session was closed, idled out, or lost its VM."""


class CommunicationError(TransientError):
    """The daemon, a worker, QEMU or the guest died or stopped answering."""


class GuestAgentError(PermanentError):
    """The guest agent refused the request (a file that is not there, a path out of bounds)."""


class PackageNotAllowedError(PermanentError):
    """A package is not on the allowlist."""


class SnapshotError(TransientError):
    """A snapshot could not be made or restored."""


class SandboxDependencyError(PermanentError):
    """Something this package needs on the host is missing (sbxd, protoc output, libzstd)."""


class AssetError(PermanentError):
    """The guest kernel or images are missing or unusable (build them with `make assets`)."""


class ProtocolError(PermanentError):
    """The daemon spoke a protocol version or sent a frame this client does not understand."""


class SandboxPermissionError(PermanentError):
    """The daemon does not accept this user, or its socket cannot be trusted."""


class PackageInstallError(SandboxError):
    """Installing the requested packages failed. The message ends with the installer's last
    lines. Transient (a ``TransientError`` too) when the package index did not answer or the
    install VM was lost; permanent (a ``PermanentError``) when the installer refused the set: no
    such version, no wheel for this platform."""


class _TransientPackageInstallError(PackageInstallError, TransientError):
    pass


class _PermanentPackageInstallError(PackageInstallError, PermanentError):
    pass


# proto/control.proto ErrorKind -> exception class.
_BY_KIND: dict[int, type[SandboxError]] = {
    1: VmConfigError,
    2: VmTimeoutError,
    3: VmCapacityError,
    4: CommunicationError,
    5: GuestAgentError,
    6: PackageNotAllowedError,
    7: SnapshotError,
    8: SessionClosedError,
    9: ProtocolError,
    10: AssetError,
    11: TransientError,  # ERROR_INTERNAL: daemon-side trouble with no better name
    12: SandboxPermissionError,
}


def from_daemon(kind: int, transient: bool, message: str) -> SandboxError:
    """The exception for an Error reply; kinds this client does not know keep the daemon's
    transient verdict."""
    cls = _BY_KIND.get(kind)
    if kind == 13:  # ERROR_PACKAGE_INSTALL: either, as the daemon says
        cls = _TransientPackageInstallError if transient else _PermanentPackageInstallError
    if cls is None:
        cls = TransientError if transient else PermanentError
    return cls(message or f"sbxd error kind {kind}", kind=kind, transient=transient)
