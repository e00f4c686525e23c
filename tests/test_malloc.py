"""The malloc settings of the processes spikelens owns (`spikelens.malloc`): the command's
process and a fleet's pool workers reuse the memory they free, and obey the user's own
glibc variables. Measured as what a user pays: page faults for arrays allocated again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")

ROOT = Path(__file__).resolve().parents[1]

#: Four rounds of allocating, filling and freeing three 8 MB arrays (a 1M-point series
#: each) after a first round, in an exit handler; prints the rounds' page faults.
PROBE = """
import atexit, resource, sys
def report():
    import numpy as np
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = [np.ones(1 << 20) for _ in range(3)]; del a
    before = faults()
    for _ in range(4):
        a = [np.ones(1 << 20) for _ in range(3)]; del a
    print('refaults', faults() - before)
atexit.register(report)
"""

#: How the process starts: as the console command, or as a pool worker's initializer.
STARTS = {
    "command": "sys.argv = ['spikelens', 'formats']\n"
               "from spikelens.cli import main\n"
               "main()\n",
    "pool worker": "import os\n"
                   "from spikelens.fleet import _adopt_environment\n"
                   "_adopt_environment(dict(os.environ))\n",
}

ROUND = 3 * (8 << 20) // 4096  # the pages of one round


def _refaults(start: str, env_update: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=str(ROOT), NUMPY_MADVISE_HUGEPAGE="0", **env_update)
    done = subprocess.run([sys.executable, "-c", PROBE + STARTS[start]],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split("refaults ")[-1])


@pytest.mark.parametrize("start", sorted(STARTS))
def test_freed_memory_is_reused_unless_the_user_set_malloc(start: str) -> None:
    """docs/performance.md: a fresh page is the dearest thing the process does, and by
    default glibc unmaps a freed large array and trims its heap, so the detector's
    temporaries come back as fresh pages (4,500-18,000 of them here with glibc's defaults,
    depending on what the process did before). Our processes keep freed memory for reuse;
    a malloc variable the user set is obeyed instead (here: map every array on its own, a
    round of fresh pages each time)."""
    assert _refaults(start, {}) < ROUND // 6
    assert _refaults(start, {"MALLOC_MMAP_THRESHOLD_": "131072"}) > 4 * ROUND * 0.95
