"""The values the API hands back and takes: results, timings, file entries, port mappings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# The reference's three, and TypeScript (run by Bun, like JavaScript).
Language = Literal["python", "javascript", "typescript", "raw"]
LANGUAGES = ("python", "javascript", "typescript", "raw")


@dataclass(frozen=True)
class TimingBreakdown:
    """Where the time of one run went, in milliseconds, as the daemon measured it."""

    setup_ms: int = 0
    boot_ms: int = 0
    execute_ms: int = 0
    total_ms: int = 0


@dataclass(frozen=True)
class PortMapping:
    """A guest port to expose on the host, on 127.0.0.1 only (``external=None``: the OS picks
    one; otherwise 1024-65535)."""

    internal: int
    external: Optional[int] = None
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class ExposedPort:
    """A port that was exposed: where the host side listens."""

    internal: int
    external: int
    host: str = "127.0.0.1"
    protocol: str = "tcp"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.external}"


@dataclass(frozen=True)
class BlockedConnection:
    """One attempt of the code to reach something that the network policy refused."""

    what: str
    port: int
    reason: str


@dataclass(frozen=True)
class NetworkReport:
    """What the network of a run did: its mode (``ports``, ``allowlist`` or ``open``), the
    allowed domains, the first refusals and how many there were in all."""

    mode: str
    allowed_domains: list[str] = field(default_factory=list)
    blocked: list[BlockedConnection] = field(default_factory=list)
    blocked_total: int = 0


@dataclass(frozen=True)
class ExecutionResult:
    """What one run or session exec produced.

    stdout and stderr are decoded as UTF-8 (invalid bytes become U+FFFD); they are capped at
    1 MiB and 100 KiB, and ``stdout_truncated``/``stderr_truncated`` say when output was cut.
    """

    stdout: str
    stderr: str
    exit_code: int
    execution_time_ms: Optional[int] = None
    external_cpu_time_ms: Optional[int] = None
    external_memory_peak_mb: Optional[int] = None
    timing: TimingBreakdown = field(default_factory=TimingBreakdown)
    warm_pool_hit: bool = False
    exposed_ports: list[ExposedPort] = field(default_factory=list)
    # Beyond the reference's table: what the daemon also reports.
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    accelerator: str = ""
    guest_arch: str = ""  # the guest's architecture: x86_64 or aarch64
    start_mode: str = ""
    exec_count: int = 0
    interpreter_reset: bool = False
    network: Optional[NetworkReport] = None  # None when the VM had no network interface
    package_layer: str = ""  # the package layer the VM had ("" without packages)
    package_layer_built: bool = False  # runs: it was installed for this run


@dataclass(frozen=True)
class FileInfo:
    """One entry of ``Session.list_files``; ``size`` is 0 for directories."""

    name: str
    is_dir: bool
    size: int
