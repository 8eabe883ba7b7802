"""The lab's figures: predict latency, draw-to-screen latency in chromium, and training with a lab watching.

1. ``POST /predict`` over real HTTP to a lab served by uvicorn in this process: 200 requests (after 20 to warm
   up) with different test images; the client's round trip and the server's own time (its ``Server-Timing``
   header: reading the body, checking it, the forward pass with every map, encoding), p50 and p95.
2. Draw-to-screen in Debian's chromium (Playwright): strokes drawn with mouse events on ``canvas#draw``; each
   figure runs from the first pointer event not yet sent to the frame after the answer is drawn (the page's
   own ``window.lab.latencies``), p50 and p95.
3. Training with a lab watching: ``cnnlab train`` in a child process, alone and with a lab (its own process)
   streaming the run's progress to a chromium page on its Live view, in turn (ABAB...); the sum of the
   epochs' seconds from the run's history; medians and their ratio; beside them the trainer's own CPU seconds
   (less sensitive to other load on the machine) and the lab process's.

Run: ``.venv/bin/python bench/bench_lab.py RUN_FOLDER [--pairs 3] [--preset fast] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import machine  # noqa: E402

from cnnlab import store  # noqa: E402
from cnnlab.inspection.images import ImageSets  # noqa: E402
from cnnlab.run import load  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(root: Path):
    """Start the lab for ``root`` in a thread; return (base URL, server)."""
    import uvicorn

    from cnnlab.lab.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(root), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def percentiles(values: list[float]) -> str:
    """``p50 X ms, p95 Y ms`` of values in ms."""
    return f"p50 {np.percentile(values, 50):.1f} ms, p95 {np.percentile(values, 95):.1f} ms"


def predict_latency(base: str, name: str, run_dir: Path, requests: int) -> tuple[list[float], list[float]]:
    """Round-trip and server times (ms) of ``requests`` predict calls with different test images."""
    import httpx2 as httpx

    images = ImageSets(load(run_dir).config).images("test")
    url = f"{base}/api/runs/{name}/predict"
    client, round_trip, server = httpx.Client(timeout=120), [], []
    for i in range(20 + requests):
        body = {"pixels": images[i % len(images)].tolist()}
        started = time.perf_counter()
        response = client.post(url, json=body)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        if i >= 20:
            round_trip.append(elapsed)
            server.append(float(response.headers["server-timing"].split("dur=")[1]))
    return round_trip, server


def draw_latency(base: str, name: str, strokes: int) -> list[float]:
    """The page's draw-to-screen figures (ms) over ``strokes`` strokes drawn with the mouse."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/#explore/{name}")
        page.wait_for_selector("canvas#draw")
        box = page.locator("canvas#draw").bounding_box()
        rng = np.random.default_rng(0)
        for s in range(strokes):
            page.click("#clear")
            page.evaluate("window.lab.latencies = []") if s == 1 else None  # the first loads the run
            x, y = box["x"] + 80 + 120 * rng.random(), box["y"] + 40
            page.mouse.move(x, y)
            page.mouse.down()
            for k in range(30):
                page.mouse.move(x + 40 * np.sin(k / 5), y + 7 * k)
                page.wait_for_timeout(16)  # about one pointer event per frame, as a hand gives
            page.mouse.up()
            page.wait_for_function("!window.lab.busy()")
        values = page.evaluate("window.lab.latencies")
        browser.close()
    return values


@dataclass
class Training:
    """One training run's figures: the sum of its epochs' seconds, the trainer's CPU seconds, and the CPU seconds
    the lab process used while the trainer ran (0 when alone)."""

    seconds: float
    trainer_cpu: float
    lab_cpu: float = 0.0
    others_cpu: float = 0.0  # every other process while it trained: the lab, chromium, Playwright's driver...
    browser_cpu: float = 0.0


def _cpu_seconds(proc: subprocess.Popen) -> float:
    """Wait for ``proc`` and return its own user + system CPU seconds."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _running_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux: /proc/stat, all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def browser_cpu_seconds() -> float:
    """CPU seconds used so far by the live chromium processes (Linux: /proc/PID/comm)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if "chrom" in (stat.parent / "comm").read_text():
                total += _running_cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return total


def train_seconds(out: Path, preset: str, epochs: int, watch: bool) -> Training:
    """Train ``preset`` into ``out`` in a child process, with a lab process and a chromium Live page when
    ``watch``; return its ``Training`` figures."""
    child = [sys.executable, "-m", "cnnlab", "train", "--preset", preset, "--epochs", str(epochs), "--out",
             str(out), "--no-progress"]
    if not watch:
        trainer = subprocess.Popen(child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        trainer_cpu = _cpu_seconds(trainer)
        assert trainer.returncode == 0
        return Training(_epoch_seconds(out), trainer_cpu)
    from playwright.sync_api import sync_playwright

    port = free_port()
    lab = subprocess.Popen([sys.executable, "-m", "cnnlab", "lab", "--root", str(out.parent), "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            _goto_when_up(page, f"http://127.0.0.1:{port}/#runs")  # the lab's own start-up ends before training
            lab_before = _running_cpu_seconds(lab.pid)
            busy_before, browser_before = _machine_busy_seconds(), browser_cpu_seconds()
            trainer = subprocess.Popen(child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (out / "progress.json").exists():
                time.sleep(0.1)
            _goto_when_up(page, f"http://127.0.0.1:{port}/#live/{out.name}")
            trainer_cpu = _cpu_seconds(trainer)  # Playwright idles meanwhile: the page runs as a user's would
            others_cpu = _machine_busy_seconds() - busy_before - trainer_cpu
            browser_cpu = browser_cpu_seconds() - browser_before
            lab_cpu = _running_cpu_seconds(lab.pid) - lab_before
            assert trainer.returncode == 0
            assert page.text_content("#live-epoch") == str(epochs), page.text_content("#live-epoch")
            browser.close()
    finally:
        lab.terminate()
        lab.wait()
    return Training(_epoch_seconds(out), trainer_cpu, lab_cpu, others_cpu, browser_cpu)


def _epoch_seconds(out: Path) -> float:
    return sum(row["seconds"] for row in store.read_history(out))


def _goto_when_up(page, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            page.goto(url)
            return
        except Exception:  # noqa: BLE001 - the lab process is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def main() -> None:
    """Measure and print the three figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="a trained run folder (e.g. runs/demo)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--strokes", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3, help="training runs alone and watched, in turn")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=("predict", "draw", "train"))
    args = parser.parse_args()
    print(machine())
    run_dir = args.run.resolve()
    base, server = serve_in_thread(run_dir.parent)
    if "predict" not in args.skip:
        round_trip, server_ms = predict_latency(base, run_dir.name, run_dir, args.requests)
        print(f"predict, {args.requests} requests on {run_dir.name}: round trip {percentiles(round_trip)}; "
              f"server {percentiles(server_ms)}")
    if "draw" not in args.skip:
        values = draw_latency(base, run_dir.name, args.strokes)
        print(f"draw to screen in chromium, {len(values)} updates over {args.strokes - 1} strokes: "
              f"{percentiles(values)}")
    server.should_exit = True
    if "train" not in args.skip:
        alone, watched = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.pairs):
                alone.append(train_seconds(Path(tmp) / f"alone-{i}", args.preset, args.epochs, watch=False))
                watched.append(train_seconds(Path(tmp) / f"watched-{i}", args.preset, args.epochs, watch=True))
                print(f"  pair {i + 1}: epochs' seconds alone {alone[-1].seconds:.2f}, watched "
                      f"{watched[-1].seconds:.2f}; trainer CPU s {alone[-1].trainer_cpu:.2f} / "
                      f"{watched[-1].trainer_cpu:.2f}; lab process CPU s {watched[-1].lab_cpu:.2f}; all other "
                      f"processes {watched[-1].others_cpu:.2f}, chromium's of them {watched[-1].browser_cpu:.2f}",
                      flush=True)
        report_training(args, alone, watched)


def report_training(args: argparse.Namespace, alone: list[Training], watched: list[Training]) -> None:
    """Print the medians of the pairs and their ratios."""
    def median(runs: list[Training], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    a, w = median(alone, "seconds"), median(watched, "seconds")
    ratios = sorted(x.seconds / y.seconds for x, y in zip(watched, alone))
    print(f"training {args.preset} for {args.epochs} epochs (sum of epoch seconds, median of {args.pairs} pairs): "
          f"alone {a:.2f} s, with a lab and a Live page watching {w:.2f} s: ratio {w / a:.3f} "
          f"(pairs {ratios[0]:.3f}-{ratios[-1]:.3f})")
    ta, tw = median(alone, "trainer_cpu"), median(watched, "trainer_cpu")
    print(f"trainer's own CPU seconds: alone {ta:.2f}, watched {tw:.2f}: ratio {tw / ta:.3f}; the lab process used "
          f"{median(watched, 'lab_cpu'):.2f} CPU s while it watched ({median(watched, 'lab_cpu') / w:.1%} of a core); "
          f"all processes but the trainer (lab, chromium, Playwright, the rest of the machine) "
          f"{median(watched, 'others_cpu'):.2f} CPU s ({median(watched, 'others_cpu') / w:.1%} of a core), chromium's "
          f"processes {median(watched, 'browser_cpu'):.2f} CPU s ({median(watched, 'browser_cpu') / w:.1%} of a core)")


if __name__ == "__main__":
    main()
