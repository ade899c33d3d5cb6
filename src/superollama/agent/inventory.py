"""What a node has and uses now: CPUs and their load, RAM, and each NVIDIA GPU's memory.

The numbers come from the machine itself — ``psutil`` for CPU and RAM; for the GPUs, NVML (NVIDIA's
management library, through its Python binding ``nvidia-ml-py``, the cluster extra) when it loads, else
NVIDIA's own ``nvidia-smi`` (the query interface its manual documents: ``--query-gpu=…
--format=csv,noheader,nounits``). A node with neither lists no GPU: an empty list, never a guess.
``Inventory.usage`` blocks (a child process for the GPUs), so the agent calls it in a thread; the GPU
query is cached for ``gpu_ttl`` seconds so that a page polling every two seconds does not ask the driver
for each look.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

__all__ = ["GpuUsage", "Inventory", "detect_gpus", "nvidia_smi_gpus", "nvml_gpus", "parse_nvidia_smi"]

_QUERY = "index,name,uuid,memory.total,memory.used,utilization.gpu"
# Where an NVIDIA driver shows itself: Linux's kernel module, and WSL2's GPU paravirtualization device.
NVIDIA_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/dxg")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuUsage:
    index: int
    name: str
    uuid: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    utilization: float | None  # percent, None when the driver does not say
    compute_capability: str | None = None  # "9.0"; NVML says it, nvidia-smi's query here does not

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "memory_total": self.memory_total,
            "memory_used": self.memory_used,
            "utilization_percent": self.utilization,
            "compute_capability": self.compute_capability,
        }


def parse_nvidia_smi(text: str) -> list[GpuUsage]:
    """``nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu
    --format=csv,noheader,nounits`` output → GPUs (memory in MiB there, bytes here). A field the driver
    reports as ``[N/A]`` or ``[Not Supported]`` becomes None (utilisation) or 0 (memory)."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 6 or not cells[0].isdigit():
            continue
        gpus.append(
            GpuUsage(
                index=int(cells[0]),
                name=cells[1],
                uuid=cells[2],
                memory_total=int(_number(cells[3]) or 0) * _MIB,
                memory_used=int(_number(cells[4]) or 0) * _MIB,
                utilization=_number(cells[5]),
            )
        )
    return gpus


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def nvidia_smi_gpus(binary: str | None = None, timeout: float = 5.0) -> list[GpuUsage]:
    """The GPUs ``nvidia-smi`` reports; an empty list where it is not installed or fails."""
    exe = binary or shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def nvml_gpus(nvml: Any = None) -> list[GpuUsage] | None:
    """The GPUs NVML reports (``nvml``: the ``pynvml`` module of ``nvidia-ml-py`` unless given); None
    when NVML cannot be used here (the binding is not installed, or the driver's library is missing), so
    that the caller asks ``nvidia-smi`` instead. A field a GPU does not support is None."""
    if nvml is None:
        if not any(os.path.exists(path) for path in NVIDIA_DRIVER_PATHS):
            return None  # no driver to talk to: the binding is not loaded (it stays for the process life)
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
            capability = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
            gpus.append(
                GpuUsage(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                    utilization=float(utilization.gpu) if utilization is not None else None,
                    compute_capability="{}.{}".format(*capability) if capability is not None else None,
                )
            )
        return gpus
    except nvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(nvml: Any, read: Callable[[Any], Any], handle: Any) -> Any:
    try:
        return read(handle)
    except nvml.NVMLError:  # NVMLError_NotSupported and its kin: the GPU does not say
        return None


def detect_gpus() -> list[GpuUsage]:
    """NVML's answer, else ``nvidia-smi``'s (``[]`` when neither is there)."""
    found = nvml_gpus()
    return found if found is not None else nvidia_smi_gpus()


class Inventory:
    """The node's capacity and use. ``gpus`` is injectable (tests, another GPU vendor's query)."""

    def __init__(
        self,
        *,
        gpus: Callable[[], Sequence[GpuUsage]] = detect_gpus,
        gpu_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gpus = gpus
        self._gpu_ttl = gpu_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._gpu_cache: tuple[float, list[GpuUsage]] | None = None
        self._cpu_times = psutil.cpu_times()  # the CPU load is measured between two looks
        self._cpu_percent: float | None = None

    def gpus(self) -> list[GpuUsage]:
        with self._lock:
            now = self._clock()
            if self._gpu_cache is None or now - self._gpu_cache[0] >= self._gpu_ttl:
                self._gpu_cache = (now, list(self._gpus()))
            return self._gpu_cache[1]

    def capacity(self) -> dict[str, Any]:
        """What the node has (the registry's ``nodes.inventory``): CPUs, RAM, devices."""
        gpus = [
            {"name": g.device, "kind": "cuda", "model": g.name, "memory_bytes": g.memory_total}
            for g in self.gpus()
        ]
        return {
            "cpus": os.cpu_count() or 1,
            "memory_bytes": psutil.virtual_memory().total,
            "devices": [{"name": "cpu", "kind": "cpu"}, *gpus],
        }

    def usage(self) -> dict[str, Any]:
        """What the node uses now: CPU busy share since the last look, load average, RAM, GPUs."""
        memory = psutil.virtual_memory()
        with self._lock:
            now = psutil.cpu_times()
            busy = _busy_percent(self._cpu_times, now)
            if busy is not None:  # else too little time passed since the last look: keep its number
                self._cpu_times, self._cpu_percent = now, busy
            cpu_percent = self._cpu_percent
        return {
            "cpus": os.cpu_count() or 1,
            "cpu_percent": cpu_percent,
            "load_average": [round(x, 2) for x in psutil.getloadavg()],
            "memory_total": memory.total,
            "memory_used": memory.total - memory.available,
            "memory_available": memory.available,
            "gpus": [g.as_json() for g in self.gpus()],
        }


def _busy_percent(before: Any, after: Any) -> float | None:
    """The share of CPU time not idle between two ``psutil.cpu_times()`` samples (None: under 0.1 s of
    CPU time passed, too little to say)."""

    def delta(field: str) -> float:
        return float(getattr(after, field, 0.0)) - float(getattr(before, field, 0.0))

    # Linux counts guest time inside user and nice already (psutil's own cpu_percent leaves it out too)
    total = sum(delta(f) for f in after._fields if f not in ("guest", "guest_nice"))
    if total < 0.1:
        return None
    idle = delta("idle") + delta("iowait")
    return round(max(0.0, min(100.0, 100.0 * (total - idle) / total)), 1)
