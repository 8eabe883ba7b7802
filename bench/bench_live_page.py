"""What the lab's Live page costs the machine: chromium's own CPU while it follows a training run.

A training process shares its cores with the browser that watches it, so every CPU second the page takes is
taken from training (on 2 cores with 2 training threads, roughly twice over: the thread that waits for the
preempted one spins). This bench isolates the page: a copy of a run folder whose ``progress.json`` is rewritten
every second as a training run does (no trainer, nothing else running in this script), served by the lab in
this process, followed by Debian's chromium on the Live view while Playwright stays idle. Side by side, in
turn: the page with nothing changing (its floor), the page as it is, and the page with the old 0.3 s CSS
transition on its progress bar (one animation of ~18 frames a second).

Run: ``.venv/bin/python bench/bench_live_page.py RUN_FOLDER [--seconds 20] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_lab import CHROMIUM, browser_cpu_seconds, serve_in_thread  # noqa: E402
from bench_train import machine  # noqa: E402

OLD_TRANSITION = ".bar div { transition: width .3s; }"


def write_progress(path: Path, stop: threading.Event) -> None:
    """Rewrite ``path`` once a second, atomically, with a batch counter that moves (as ``ProgressFile``)."""
    batch = 0
    while not stop.is_set():
        batch = (batch + 70) % 938
        record = {"status": "training", "pid": os.getpid(), "epoch": 1, "epochs": 2, "completed": 0,
                  "batch": batch, "batches": 938, "loss": 0.5 / (1 + batch / 500), "accuracy": 0.9,
                  "updated": time.time()}
        part = path.with_suffix(".part")
        part.write_text(json.dumps(record))
        os.replace(part, path)
        stop.wait(1.0)


def page_cpu(base: str, progress: Path, seconds: float, updating: bool, style: str | None) -> float:
    """Chromium's CPU seconds per second while its Live page follows the run ``live`` (whose progress file is
    ``progress``), with ``style`` added to the page."""
    from playwright.sync_api import sync_playwright

    stop = threading.Event()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(f"{base}/#live/live")
        if style:
            page.add_style_tag(content=style)
        page.wait_for_timeout(2000)
        if updating:
            threading.Thread(target=write_progress, args=(progress, stop), daemon=True).start()
        page.wait_for_timeout(1500)
        before, start = browser_cpu_seconds(), time.monotonic()
        time.sleep(seconds)  # Playwright idles: the page runs as a user's would
        used = (browser_cpu_seconds() - before) / (time.monotonic() - start)
        stop.set()
        shown = page.text_content("#live-batch")
        browser.close()
    assert not updating or shown not in ("–", "938 / 938"), shown  # the page did follow the updates
    return used


def main() -> None:
    """Measure and print chromium's share of a core for the three pages."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="a trained run folder (e.g. runs/demo)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.run, Path(tmp) / "live")
        base, server = serve_in_thread(Path(tmp))
        pages = {"nothing changing": (False, None), "updating every second (the page as it is)": (True, None),
                 "updating, with the old 0.3 s bar transition": (True, OLD_TRANSITION)}
        shares: dict[str, list[float]] = {name: [] for name in pages}
        for _ in range(args.rounds):
            for name, (updating, style) in pages.items():
                shares[name].append(page_cpu(base, Path(tmp) / "live" / "progress.json", args.seconds, updating,
                                             style))
        server.should_exit = True
    floor = statistics.median(shares["nothing changing"])
    for name, values in shares.items():
        share = statistics.median(values)
        print(f"chromium on the Live page, {name}: {share:.1%} of a core (rounds: "
              f"{', '.join(f'{v:.1%}' for v in values)}); {share / max(floor, 1e-9):.1f}x the idle page")

if __name__ == "__main__":
    main()
