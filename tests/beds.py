"""What the real test beds (SLURM, SSH, podman) need from this machine."""
from __future__ import annotations

import os
import shutil


def unavailable(purpose: str, tools: tuple[str, ...], packages: str) -> str | None:
    """Why a test bed cannot run here, or None: it needs root (for
    ``purpose``) and ``tools``, which Debian's ``packages`` install."""
    if os.geteuid() != 0:
        return f"needs root ({purpose})"
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install {packages}"
    return None
