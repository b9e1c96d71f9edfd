"""`omnitrace doctor`: what the full-fidelity recorder needs, checked one by one."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from omnitrace.record.kernel import BPF_DIR, PROGRAM, TRACEFS


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False


def run_checks() -> list[Check]:
    checks = [_root(), _bpf_syscall(), _tracefs(), _bcc(), _headers()]
    if all(c.ok for c in checks):
        checks.append(_compile())
    checks.append(_nvml())
    return checks


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "running as root" if ok else f"running as uid {os.geteuid()}",
                 "run under sudo (BPF needs CAP_BPF and CAP_PERFMON)")


def _bpf_syscall() -> Check:
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    unpriv = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
    detail = f"kernel {platform.release()}, BTF {'present' if btf else 'absent'}"
    if unpriv.exists():
        detail += f", unprivileged_bpf_disabled={unpriv.read_text().strip()}"
    return Check("bpf", Path("/proc/sys/kernel/bpf_stats_enabled").exists() or btf, detail,
                 "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS")


def _tracefs() -> Check:
    ok = (TRACEFS / "events" / "signal" / "signal_generate").is_dir()
    return Check("tracefs", ok, f"{TRACEFS} {'mounted' if ok else 'not mounted'}",
                 f"mount -t tracefs nodev {TRACEFS}")


def _bcc() -> Check:
    try:
        import bcc
        return Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} from {Path(bcc.__file__).parent}")
    except ImportError as exc:
        return Check("bcc", False, f"cannot import bcc ({exc})",
                     "apt-get install python3-bpfcc, then make setup (links it into .venv)")


def _headers() -> Check:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not (build / "include").exists():
        return Check("kernel headers", False, f"{build} missing",
                     "make setup (links Debian's linux-headers-amd64 as a stand-in)")
    target = build.resolve()
    stand_in = platform.release() not in target.name
    detail = f"{build} -> {target}" + (" (stand-in set: fine, omnitrace reads no kernel structs)"
                                        if stand_in else "")
    return Check("kernel headers", True, detail)


def _compile() -> Check:
    try:
        from bcc import BPF
        BPF(text=(BPF_DIR / PROGRAM).read_bytes(),
            cflags=[f"-I{BPF_DIR}", "-DRINGBUF_PAGES=16", "-Wno-macro-redefined"]).cleanup()
        return Check("tracepoint programs", True, f"{PROGRAM} compiles and attaches")
    except Exception as exc:  # bcc raises bare Exception
        return Check("tracepoint programs", False, f"{PROGRAM} failed: {exc}",
                     "run omnitrace doctor after fixing the checks above; see docs/recorder.md")


def _nvml() -> Check:
    try:
        import pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
        return Check("nvml", True, f"{count} GPU(s), driver {driver}", optional=True)
    except Exception as exc:  # pynvml raises NVMLError subclasses or ImportError
        return Check("nvml", False, f"no NVML GPU ({type(exc).__name__}: {exc})",
                     "only needed on GPU machines: install the NVIDIA driver; the simulated "
                     "device (--gpu sim) serves elsewhere", optional=True)
