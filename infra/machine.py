"""What this machine has free for a run: memory now, on the CPU or on an accelerator."""
from __future__ import annotations

import os


def available_memory_bytes(device: str = "cpu") -> float | None:
    """Bytes a process could allocate now on ``device`` ('cpu', 'cuda', 'cuda:N'); None where unknown.

    CPU: the kernel's MemAvailable (free memory plus what caches would give back). CUDA: the device's free
    memory as the driver reports it.
    """
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
