"""The image test's Debian base, made by debootstrap in the background from the start of the test session.

debootstrap is most of that test's time (about two minutes of downloads and unpacking, little CPU), so
conftest starts it as soon as the collected tests include the image test; the test then waits for it. The
process is stopped by its PID and its folder removed when the session ends, whether the test ran or not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

DEBOOTSTRAP = shutil.which("debootstrap")
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
_started: tuple[subprocess.Popen[bytes], Path] | None = None


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for SUITE (deb822 `.sources` or one-line `.list` files)."""
    files = sorted(sources.glob("sources.list.d/*.sources")) + [sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s", text, re.M):
            if match.group(2) == SUITE:
                return match.group(1)
    return FALLBACK_MIRROR


def possible() -> bool:
    return os.geteuid() == 0 and DEBOOTSTRAP is not None


def start() -> None:
    """Begin `debootstrap --variant=minbase --include=python3,python3-venv` into a folder of its own (once)."""
    global _started
    if _started is not None or not possible():
        return
    assert DEBOOTSTRAP is not None
    root = Path(tempfile.mkdtemp(prefix="fmp-deb-"))
    command = [DEBOOTSTRAP, "--variant=minbase", "--include=python3,python3-venv", SUITE, str(root / "rootfs")]
    with (root / "debootstrap.log").open("wb") as log:
        proc = subprocess.Popen([*command, apt_mirror()], stdout=log, stderr=subprocess.STDOUT)
    _started = (proc, root)


def rootfs(timeout: float) -> tuple[Path, float]:
    """The finished root file system, and how long this call waited for it.

    Raises:
        AssertionError: debootstrap failed or did not finish in time (its log's tail says why).
    """
    start()
    assert _started is not None
    proc, root = _started
    waited = time.monotonic()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"debootstrap did not finish within {timeout:g} s") from None
    log = (root / "debootstrap.log").read_text(errors="replace")
    assert code == 0, f"debootstrap failed ({code}): {log[-3000:]}"
    return root / "rootfs", round(time.monotonic() - waited, 1)


def stop() -> None:
    global _started
    if _started is None:
        return
    proc, root = _started
    _started = None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    unmount_under(root)  # a debootstrap stopped in its second stage leaves /proc and /sys mounted in the target
    shutil.rmtree(root, ignore_errors=True)


def unmount_under(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
