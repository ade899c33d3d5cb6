"""The node inventory: real CPU and RAM numbers from this machine, GPUs from ``nvidia-smi``'s CSV query.

This machine has no NVIDIA GPU: the GPU path runs against a stand-in ``nvidia-smi`` (a script that checks
the query it is given and prints what the real tool prints for that query on a two-GPU host).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import psutil
import pynvml

from superollama.agent import GpuUsage, Inventory
from superollama.agent.inventory import detect_gpus, nvidia_smi_gpus, nvml_gpus, parse_nvidia_smi

# what `nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu
#        --format=csv,noheader,nounits` prints (MiB, percent)
SMI_OUTPUT = (
    "0, NVIDIA H200, GPU-5d1e2f3a-0000-1111-2222-333344445555, 143771, 81234, 37\n"
    "1, NVIDIA H200, GPU-6e2f3a4b-0000-1111-2222-333344445555, 143771, 4, [N/A]\n"
)
MIB = 1024 * 1024


def test_parse_nvidia_smi_reads_memory_in_bytes_and_missing_fields_as_none() -> None:
    gpus = parse_nvidia_smi(SMI_OUTPUT + "\nNo devices were found\n")
    assert [g.device for g in gpus] == ["cuda:0", "cuda:1"]
    assert gpus[0].memory_total == 143771 * MIB and gpus[0].memory_used == 81234 * MIB
    assert gpus[0].utilization == 37.0 and gpus[1].utilization is None
    assert gpus[0].as_json()["name"] == "NVIDIA H200"


def test_a_stand_in_nvidia_smi_is_queried_as_documented(tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    expected = "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "{expected}" ] && [ "$2" = "--format=csv,noheader,nounits" ] || exit 9\n'
        f"printf '%s' '{SMI_OUTPUT}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    gpus = nvidia_smi_gpus(str(script))
    assert [(g.index, g.memory_used) for g in gpus] == [(0, 81234 * MIB), (1, 4 * MIB)]
    failing = tmp_path / "broken-smi"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 1\n")
    failing.chmod(0o755)
    assert nvidia_smi_gpus(str(failing)) == []
    assert nvidia_smi_gpus(str(tmp_path / "absent")) == []


def test_usage_reports_this_machines_cpu_and_ram() -> None:
    inventory = Inventory(gpus=list)
    # burn a little CPU so that the busy share between two looks is measurable
    deadline = psutil.cpu_times()
    total = sum(deadline)
    while sum(psutil.cpu_times()) - total < 0.3:
        sum(i * i for i in range(20_000))
    usage = inventory.usage()
    memory = psutil.virtual_memory()
    assert usage["cpus"] == os.cpu_count()
    assert usage["memory_total"] == memory.total
    assert 0 < usage["memory_used"] < memory.total
    assert abs(usage["memory_available"] - memory.available) < memory.total // 10
    assert usage["cpu_percent"] is not None and 0.0 < usage["cpu_percent"] <= 100.0
    assert len(usage["load_average"]) == 3
    assert usage["gpus"] == []
    again = inventory.usage()  # asked at once again: too little time passed, the last number stays
    assert again["cpu_percent"] == usage["cpu_percent"]


def test_capacity_lists_gpus_and_their_query_is_cached() -> None:
    calls = []
    now = [0.0]

    def gpus() -> list[GpuUsage]:
        calls.append(now[0])
        return parse_nvidia_smi(SMI_OUTPUT)

    inventory = Inventory(gpus=gpus, gpu_ttl=2.0, clock=lambda: now[0])
    devices = inventory.capacity()["devices"]
    assert [d["name"] for d in devices] == ["cpu", "cuda:0", "cuda:1"]
    assert devices[1]["memory_bytes"] == 143771 * MIB
    inventory.usage()
    now[0] = 2.5
    assert inventory.usage()["gpus"][0]["memory_used"] == 81234 * MIB
    assert calls == [0.0, 2.5]


class _NvmlReplay:
    """NVML's Python binding (``pynvml``, nvidia-ml-py) answering as it does on the two-GPU H200 host of
    ``SMI_OUTPUT``: the same call shapes (handles, a memory struct in bytes, a utilisation struct, the
    compute capability pair, NotSupported for a field) with the real binding's error classes. No GPU here
    to record a session from: the values are that host's, transcribed."""

    NVMLError = pynvml.NVMLError

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gpus = [
            ("NVIDIA H200", "GPU-5d1e2f3a-0000-1111-2222-333344445555", 143771 * MIB, 81234 * MIB, 37),
            ("NVIDIA H200", "GPU-6e2f3a4b-0000-1111-2222-333344445555", 143771 * MIB, 4 * MIB, None),
        ]

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][0].encode()  # older bindings answer bytes

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.gpus[h][1]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        total, used = self.gpus[h][2], self.gpus[h][3]
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        if self.gpus[h][4] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=self.gpus[h][4], memory=12)

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return (9, 0)


def test_nvml_reads_memory_utilisation_and_compute_capability() -> None:
    replay = _NvmlReplay()
    gpus = nvml_gpus(replay)
    assert gpus is not None
    same = [(g.device, g.uuid, g.memory_total, g.memory_used, g.utilization) for g in gpus]
    smi = [
        (g.device, g.uuid, g.memory_total, g.memory_used, g.utilization) for g in parse_nvidia_smi(SMI_OUTPUT)
    ]
    assert same == smi  # NVML and nvidia-smi agree on the same host
    assert [g.compute_capability for g in gpus] == ["9.0", "9.0"]
    assert gpus[0].name == "NVIDIA H200" and gpus[1].utilization is None
    assert replay.calls == ["init", "shutdown"]


def test_nvml_that_cannot_start_hands_over_to_nvidia_smi() -> None:
    class NoDriver(_NvmlReplay):
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    assert nvml_gpus(NoDriver()) is None
    # the real binding on this machine: with no NVIDIA driver it cannot start either, and detect_gpus
    # answers what nvidia-smi says (nothing here); on a GPU host NVML answers itself
    has_driver = Path("/proc/driver/nvidia").exists()
    assert (nvml_gpus() is None) == (not has_driver)
    if not has_driver:
        assert detect_gpus() == nvidia_smi_gpus()
