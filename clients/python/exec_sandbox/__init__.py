"""exec_sandbox: run untrusted Python, JavaScript and shell code in QEMU microVMs through the
exec-sandbox daemon (sbxd), with the API of the reference project.

    from exec_sandbox import Scheduler

    async with Scheduler() as scheduler:
        result = await scheduler.run("print('hi')", language="python")
"""
from ._config import SchedulerConfig
from ._errors import (AssetError, CommunicationError, GuestAgentError, NotSupportedError,
                      PackageInstallError, PackageNotAllowedError, PermanentError, ProtocolError, SandboxDependencyError,
                      SandboxError, SandboxPermissionError, SessionClosedError, SnapshotError,
                      TransientError, VmCapacityError, VmConfigError, VmTimeoutError)
from ._models import (BlockedConnection, ExecutionResult, ExposedPort, FileInfo, Language,
                      NetworkReport, PortMapping, TimingBreakdown)
from ._scheduler import Scheduler, Session

__version__ = "0.1.0"

__all__ = [
    "Scheduler", "Session", "SchedulerConfig", "ExecutionResult", "TimingBreakdown", "FileInfo",
    "PortMapping", "ExposedPort", "NetworkReport", "BlockedConnection", "Language",
    "SandboxError", "TransientError", "PermanentError", "VmTimeoutError", "VmCapacityError",
    "VmConfigError", "SessionClosedError", "CommunicationError", "GuestAgentError",
    "PackageNotAllowedError", "PackageInstallError", "SnapshotError", "SandboxDependencyError", "AssetError",
    "NotSupportedError", "ProtocolError", "SandboxPermissionError",
]
