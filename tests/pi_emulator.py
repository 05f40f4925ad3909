"""Host-side helpers for the emulated Raspberry Pi tests: set the emulator up, install aarch64
packages into a site folder, and run a job through tests/pi_runner.py on an emulated board."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
WHEELS = ROOT / ".cache" / "pi-emulator" / "wheels"
RUNNER = Path(__file__).resolve().parent / "pi_runner.py"
BOARDS = ("pi4", "pi5")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def set_up() -> None:
    """Install qemu and friends if missing, and build (or reuse) .cache/pi-emulator/."""
    _run(["bash", str(SCRIPTS / "setup-pi-emulator.sh")], timeout=600)


def build_pi_wheel(out_dir: Path) -> Path:
    """The aarch64 wheel from scripts/build-pi-wheel.sh (cached in .cache/pi-wheel/)."""
    done = _run(["bash", str(SCRIPTS / "build-pi-wheel.sh"), str(out_dir)], timeout=900)
    return Path(done.stdout.strip().splitlines()[-1])


def install_site(site: Path, *requirements: str) -> None:
    """What `pip install REQUIREMENTS` gives a Pi, from local wheels only, unpacked into site."""
    _run([str(SCRIPTS / "pi-pip"), "install", "-q", "--no-index", "--find-links", str(WHEELS),
          "--target", str(site), *requirements], timeout=300)


def run_job(board: str, site: Path, job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run pi_runner.py on the emulated board; returns its result.json (outputs as .npy beside it)."""
    job_file = workdir / f"job-{board}.json"
    result_file = workdir / f"result-{board}.json"
    job_file.write_text(json.dumps({**job, "result": str(result_file)}))
    run_python(board, site, str(RUNNER), str(job_file))
    return json.loads(result_file.read_text())


def run_python(board: str, site: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The emulated board's python3.11 with ARGS and only site's packages; raises if it fails."""
    return _run([str(SCRIPTS / "pi-python"), "--board", board, "--site", str(site), *args], timeout=timeout)
