"""SchedulerConfig: the reference's configuration keys, plus where the daemon is.

Each key's default can come from an ``EXEC_SANDBOX_<KEY>`` environment variable, as in the
reference; arguments given to the constructor win over the environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ._errors import VmConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env(name: str, default: Any, conv: Callable[[str], Any]) -> Callable[[], Any]:
    def get() -> Any:
        v = os.environ.get("EXEC_SANDBOX_" + name.upper())
        if v is None or v == "":
            return default
        try:
            return conv(v)
        except ValueError:
            raise VmConfigError(f"EXEC_SANDBOX_{name.upper()}: `{v}` is not valid") from None
    return get


def _bool(v: str) -> bool:
    if v.lower() in _TRUE:
        return True
    if v.lower() in _FALSE:
        return False
    raise ValueError(v)


def _int(name: str, default: int) -> Any:
    return field(default_factory=_env(name, default, int))


def _str(name: str, default: Optional[str]) -> Any:
    return field(default_factory=_env(name, default, str))


def _flag(name: str, default: bool) -> Any:
    return field(default_factory=_env(name, default, _bool))


# key: (lowest, highest) for the integer keys, as sbxd checks them.
_RANGES = {
    "max_concurrent_vms": (1, 100),
    "warm_pool_size": (0, 100),
    "default_memory_mb": (128, 2048),
    "default_timeout_seconds": (1, 300),
    "session_idle_timeout_seconds": (10, 3600),
    "max_concurrent_s3_uploads": (1, 16),
}

# The reference's defaults (before any EXEC_SANDBOX_* variable).
_DEFAULTS: dict[str, Any] = {
    "max_concurrent_vms": 10, "warm_pool_size": 0, "default_memory_mb": 256,
    "default_timeout_seconds": 30, "session_idle_timeout_seconds": 300, "images_dir": None,
    "snapshot_cache_dir": "/tmp/exec-sandbox-cache", "s3_bucket": None, "s3_region": "us-east-1",
    "max_concurrent_s3_uploads": 4, "enable_package_validation": True,
    "auto_download_assets": True,
}

# The reference's keys, in its table's order; each is also an sbxd setting of the same name.
REFERENCE_KEYS = (
    "max_concurrent_vms", "warm_pool_size", "default_memory_mb", "default_timeout_seconds",
    "session_idle_timeout_seconds", "images_dir", "snapshot_cache_dir", "s3_bucket", "s3_region",
    "max_concurrent_s3_uploads", "enable_package_validation", "auto_download_assets",
)


@dataclass(frozen=True)
class SchedulerConfig:
    """How a Scheduler's daemon is set up.

    Without ``socket`` (nor ``EXEC_SANDBOX_SOCKET``) the Scheduler starts a private ``sbxd``
    with these settings and stops it on exit. With ``socket`` it uses the daemon listening there;
    the keys it can see in that daemon's status (``max_concurrent_vms``, ``warm_pool_size``,
    ``images_dir``, ``snapshot_cache_dir``) must then agree with what is set here, where set to
    anything but the default. ``default_memory_mb``, ``default_timeout_seconds`` and
    ``session_idle_timeout_seconds`` are sent with each request, so they hold on any daemon.
    """

    max_concurrent_vms: int = _int("max_concurrent_vms", 10)
    warm_pool_size: int = _int("warm_pool_size", 0)
    default_memory_mb: int = _int("default_memory_mb", 256)
    default_timeout_seconds: int = _int("default_timeout_seconds", 30)
    session_idle_timeout_seconds: int = _int("session_idle_timeout_seconds", 300)
    images_dir: Optional[str] = _str("images_dir", None)
    snapshot_cache_dir: str = _str("snapshot_cache_dir", "/tmp/exec-sandbox-cache")
    s3_bucket: Optional[str] = _str("s3_bucket", None)
    s3_region: str = _str("s3_region", "us-east-1")
    max_concurrent_s3_uploads: int = _int("max_concurrent_s3_uploads", 4)
    enable_package_validation: bool = _flag("enable_package_validation", True)
    auto_download_assets: bool = _flag("auto_download_assets", True)
    # Ours: where the daemon is.
    socket: Optional[str] = _str("socket", None)
    """Control socket of a running sbxd; None: start a private one."""
    sbxd: Optional[str] = _str("sbxd", None)
    """The sbxd binary for a private daemon; None: beside ``sbx`` or in $PATH."""
    sbxd_args: tuple[str, ...] = ()
    """Further flags for a private sbxd (``("--accel", "tcg")``); see ``sbxd --help``."""

    def __post_init__(self) -> None:
        for key, (lo, hi) in _RANGES.items():
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise VmConfigError(f"{key}: {v!r} is not a number in {lo}-{hi}")

    def explicit(self) -> dict[str, Any]:
        """The reference keys whose value is not the reference's default."""
        return {k: getattr(self, k) for k in REFERENCE_KEYS if getattr(self, k) != _DEFAULTS[k]}

    def sbxd_flags(self) -> list[str]:
        """The flags that give a private sbxd this configuration."""
        out: list[str] = []
        for k in REFERENCE_KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            if isinstance(v, bool):
                v = "true" if v else "false"
            out += ["--" + k.replace("_", "-"), str(v)]
        return out
