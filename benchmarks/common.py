"""What the benchmarks share: environment, the machine's description, data, a vendor service in a separate
process, process memory and CPU time from /proc, timing helpers and the results folder."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads spin while they wait for each other (libgomp's default). On a machine whose cores are shared
# with other work that is ruinous: a spinning thread burns the time slice its descheduled partner needs, and every
# parallel op then waits a scheduler quantum (a step took 5.4 s instead of 0.56 s with the cores busy; on the idle
# machine the default is ~10% faster: see scaling.py and README.md). PASSIVE makes waiting threads sleep. Set
# before torch is imported; the vendor service started by vendor_service() inherits it. Export OMP_WAIT_POLICY
# yourself to override.
if os.environ.get("SPLITPRIV_BENCH_OMP_DEFAULT") != "1":  # set by scaling.py to measure libgomp's default
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "SPLITPRIV_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SPLITPRIV_DATA_DIR"] = str(ROOT.parent / "shared" / "data")

from http_vs_inprocess import cpu_seconds, free_port, load_texts  # noqa: E402  (the colleague's helpers)


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def machine() -> dict:
    """Cores, CPU model, memory, torch and the platform: the numbers are only comparable on the same machine."""
    import torch

    import splitpriv
    from splitpriv.provenance import git_commit, git_dirty

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "splitpriv": splitpriv.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),  # true: tracked files differed from that commit when it ran
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def load_dev(n: int | None = None) -> tuple[list[str], list[int]]:
    from splitpriv.data import DatasetNotFoundError, load_dataset

    try:
        ds = load_dataset("sst2", "dev", limit=n, seed=0)
    except DatasetNotFoundError:
        ds = load_dataset("sst2-sample", "dev")
    texts, labels = list(ds.texts), list(ds.labels)
    while n is not None and len(texts) < n:
        texts, labels = texts + list(ds.texts), labels + list(ds.labels)
    return (texts[:n], labels[:n]) if n is not None else (texts, labels)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size (VmRSS) of this process or of ``pid``, from /proc."""
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in {path}")


@contextmanager
def vendor_service(extra: str = "", env: dict | None = None, model: str | None = None, **serve_options):
    """A vendor service (``splitpriv.service.serve``) in a separate process on a free loopback port; yields
    ``(url, process)`` and stops it afterwards. ``extra`` is Python run before serving, ``env`` extra environment,
    ``model`` the model it serves (default MiniLM), ``serve_options`` more keywords of ``serve`` (literals)."""
    import httpx

    port = free_port()
    code = (f"{extra}\nfrom splitpriv.service import serve; "
            f"serve(model={model!r}, port={port}, log_level='warning', "
            + ", ".join(f"{k}={v!r}" for k, v in {"checkpoint_every": None, **serve_options}.items()) + ")")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vendor service exited with {proc.returncode}")
            try:
                httpx.get(f"{url}/v1/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the vendor service did not come up") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def synthetic_batch(seed: int, size: int, length: int, d: int = 384):
    """What a customer sends and returns, without a model: ``(hidden [size, length, d] float16, mask, grad [size,
    2])``, the first 40% of positions real, seeded by ``seed`` (the vendor-side benchmarks' training steps)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, length, dtype=torch.long)
    mask[:, : length * 2 // 5] = 1
    hidden = (torch.randn(size, length, d, generator=g) * mask.unsqueeze(-1)).half()
    return hidden, mask, torch.randn(size, 2, generator=g) / size


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict:
    return {"best": max(values), "median": statistics.median(values), "runs": values}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def print_table(rows: list[list], header: list[str]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


def together(n: int, body) -> float:
    """Run ``body(i)`` for i < n in n threads released at once by a barrier; returns the wall time in s, and raises
    the first error any thread hit."""
    import threading

    barrier, errors = threading.Barrier(n), []

    def work(i: int) -> None:
        try:
            barrier.wait()
            body(i)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


__all__ = ["RESULTS", "ROOT", "cpu_seconds", "free_port", "load_dev", "load_texts", "machine", "percentile",
           "print_table", "quiet", "rss_bytes", "summarize", "together", "vendor_service", "write_result"]
