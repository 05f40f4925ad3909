"""Turns the wheel setuptools builds on the workstation into the Raspberry Pi wheel.

setuptools names a wheel after the machine that built it, not the one the cross-compiled
kernel library targets. This checks the library really is aarch64 and needs nothing a Pi lacks,
then retags the wheel py3-none-manylinux_2_<glibc>_aarch64: the library links no Python, and
<glibc> is the newest glibc symbol version it uses (so pip on an older OS refuses it).

    python scripts/pi_wheel.py WHEEL OUTDIR READELF   -> prints the path of the Pi wheel
"""
from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

AARCH64 = 183  # ELF e_machine of aarch64
LIBRARY_DIR = "pscompress/runtime/"
# Anything a Raspberry Pi OS install may lack: the library must carry its own C++ runtime.
FORBIDDEN_NEEDS = re.compile(r"^(GLIBCXX|CXXABI|GCC)_")


def elf_machine(data: bytes) -> int:
    if data[:4] != b"\x7fELF":
        raise SystemExit("pi_wheel: the kernel library is not an ELF file")
    order = "little" if data[5] == 1 else "big"
    return int.from_bytes(data[18:20], order)


def glibc_floor(library: Path, readelf: str) -> int:
    """The minor of the newest GLIBC_2.x symbol version the library needs (at least 17)."""
    text = subprocess.run([readelf, "--version-info", "--wide", str(library)], check=True,
                          capture_output=True, text=True).stdout
    needs = set(re.findall(r"Name: (\S+)\s+Flags", text))
    bad = sorted(n for n in needs if FORBIDDEN_NEEDS.match(n))
    if bad:
        raise SystemExit(f"pi_wheel: the kernel library needs {', '.join(bad)}: link libstdc++/libgcc statically")
    minors = [int(m.group(1)) for n in needs if (m := re.fullmatch(r"GLIBC_2\.(\d+)(?:\.\d+)?", n))]
    return max([17, *minors])


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def retag(wheel: Path, out_dir: Path, readelf: str) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        infos = {info.filename: info for info in zf.infolist()}  # keeps file modes
        members = {name: zf.read(info) for name, info in infos.items()}
    libraries = [n for n in members if n.startswith(LIBRARY_DIR) and n.endswith(".so")]
    if len(libraries) != 1:
        raise SystemExit(f"pi_wheel: expected one kernel library under {LIBRARY_DIR}, found {libraries}")
    (library,) = libraries
    if elf_machine(members[library]) != AARCH64:
        raise SystemExit(f"pi_wheel: {library} is not an aarch64 library (was it cross-compiled?)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "lib.so"
        copy.write_bytes(members[library])
        platform = f"manylinux_2_{glibc_floor(copy, readelf)}_aarch64"

    dist_info = next(n.split("/")[0] for n in members if n.endswith(".dist-info/WHEEL"))
    wheel_meta = f"{dist_info}/WHEEL"
    lines = [line for line in members[wheel_meta].decode().splitlines()
             if not line.startswith(("Tag:", "Root-Is-Purelib:"))]
    lines += ["Root-Is-Purelib: false", f"Tag: py3-none-{platform}"]
    members[wheel_meta] = ("\n".join(lines) + "\n").encode()
    record = f"{dist_info}/RECORD"
    members[record] = ("\n".join(record_line(n, d) for n, d in members.items() if n != record)
                       + f"\n{record},,\n").encode()

    name, version = wheel.name.split("-")[:2]
    target = out_dir / f"{name}-{version}-py3-none-{platform}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in members.items():
            zf.writestr(infos[n], d, compress_type=zipfile.ZIP_DEFLATED)
    return target


if __name__ == "__main__":
    print(retag(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
