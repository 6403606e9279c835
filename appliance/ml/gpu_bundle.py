"""Gather what a GPU run needs and its machine lacks: Keras's wheels and the CIFAR-10 archive.

    python -m appliance.ml.gpu_bundle [--out build/gpu-bundle] [--data ARCHIVE]

The lent GPU machine has no internet and no TensorFlow; its ``python3`` (3.12 when last seen)
has JAX, numpy, Pillow and tqdm, and Keras's own needs except two. So the bundle (a folder under
the git-ignored build/, carried to the machine by name) holds

- ``wheels/``: Keras (the version pinned here) and what it needs that the machine lacks: namex
  and optree (a compiled extension, so its wheel is the one for the machine's Python); always
  installed there;
- ``fallback/``: Keras's pure-Python needs the machine had when last seen, each installed there
  only if it cannot be imported (listed in ``fallback/modules.txt``), so theirs stay in use;
- the dataset archive, and ``bundle.json`` (versions, sizes, sha256 of each file).

``appliance/ml/gpu_run.sh`` is the command that uses it there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.model import sha256_file

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "build" / "gpu-bundle"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
# The versions this project's own venv runs (pyproject pins tensorflow-cpu, which brings these).
WHEELS = {"keras": "3.15.1", "namex": "0.1.0", "optree": "0.20.0"}
# distribution -> (version, module it provides)
FALLBACK = {
    "absl-py": ("2.5.1", "absl"),
    "rich": ("15.0.0", "rich"),
    "markdown-it-py": ("4.3.0", "markdown_it"),
    "mdurl": ("0.1.2", "mdurl"),
    "pygments": ("2.21.0", "pygments"),
    "packaging": ("26.4", "packaging"),
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


class BundleError(RuntimeError):
    """A wheel could not be downloaded or the data is missing; the message says which."""


def download(requirement: str, dest: Path, python_version: str) -> Path:
    """One wheel for the GPU machine's Python and platform, without its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    done = subprocess.run([*command, requirement], capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise BundleError(f"pip download {requirement} failed: {tail}")
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if not found:
        raise BundleError(f"pip download {requirement}: no wheel of that name in {dest}")
    return max(found, key=lambda p: p.stat().st_mtime)


def build_bundle(out: Path, data: Path, python_version: str) -> dict[str, dict[str, int | str]]:
    """Fill ``out``; returns what bundle.json records of each file (bytes, sha256)."""
    if not data.is_file():
        raise BundleError(f"{data}: no such archive (pass --data)")
    for folder in ("wheels", "fallback"):
        shutil.rmtree(out / folder, ignore_errors=True)  # one version of each, never two
    files: dict[str, dict[str, int | str]] = {}
    for name, version in WHEELS.items():
        wheel = download(f"{name}=={version}", out / "wheels", python_version)
        print(f"  wheels/{wheel.name}", flush=True)
    lines = []
    for name, (version, module) in FALLBACK.items():
        wheel = download(f"{name}=={version}", out / "fallback", python_version)
        lines.append(f"{module} {wheel.name}")
        print(f"  fallback/{wheel.name}", flush=True)
    (out / "fallback" / "modules.txt").write_text("\n".join(lines) + "\n")
    target = out / data.name
    if not target.exists() or sha256_file(target) != sha256_file(data):
        for stale in out.glob("*.tar.gz"):
            stale.unlink()
        shutil.copyfile(data, target)
    print(f"  {target.name}", flush=True)
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "bundle.json":
            rel = path.relative_to(out).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    info = {"python_version": python_version, "data": data.name, "files": files}
    (out / "bundle.json").write_text(json.dumps(info, indent=1) + "\n")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.ml.gpu_bundle", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default %(default)s")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default %(default)s")
    parser.add_argument(
        "--python-version", default="3.12", help="the GPU machine's Python (default %(default)s)"
    )
    args = parser.parse_args(argv)
    print(f"gpu bundle for Python {args.python_version} in {args.out}:", flush=True)
    try:
        files = build_bundle(args.out, args.data, args.python_version)
    except BundleError as exc:
        print(f"gpu_bundle: {exc}", file=sys.stderr)
        return 2
    total = sum(int(f["bytes"]) for f in files.values())
    print(f"{len(files)} files, {total / 2**20:.1f} MiB (bundle.json lists them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
