"""Regenerate the report screenshots in docs/ (and the pages they show, beside them in a
temporary folder): a single-run page of a labelled bench run with two incidents (r18: a bad
batch, then an LR-schedule spike) and the multi-run page of the modded-nanogpt 124M logs
analysed together. Needs ../shared (the bench and real logs) and Debian's `chromium`.

    python benchmarks/screenshots.py            # writes docs/report-single.png, report-multi.png
    python benchmarks/screenshots.py --keep DIR # also keeps the HTML pages in DIR
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from spikelens.analyze import analyze  # noqa: E402
from spikelens.readers import read_runs  # noqa: E402
from spikelens.report import render  # noqa: E402

SINGLE = SHARED / "bench" / "runs" / "r18"
MULTI = SHARED / "real_logs" / "modded_nanogpt"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium() -> str:
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if found is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    return found


def shoot(page: Path, png: Path, height: int, work: Path) -> None:
    """Screenshot `page` at 1400 px wide after its scripts ran (virtual time)."""
    subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={work / ('profile-' + png.stem)}",
         "--virtual-time-budget=20000", f"--window-size=1400,{height}",
         f"--screenshot={png}", page.as_uri()],
        check=True, capture_output=True, timeout=300,
    )
    print(f"wrote {png.relative_to(ROOT)} ({png.stat().st_size // 1024} kB)")


def single_page(out: Path) -> Path:
    log = next(p for p in sorted(SINGLE.iterdir()) if p.is_file())
    runs = read_runs(log)
    page = out / "report-single.html"
    page.write_text(render(analyze(runs), runs, "html"), encoding="utf-8")
    return page


def multi_page(out: Path) -> Path:
    runs = [r for p in sorted(MULTI.glob("*124M*.log")) for r in read_runs(p)]
    page = out / "report-multi.html"
    page.write_text(render(analyze(runs), runs, "html"), encoding="utf-8")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the HTML pages in this folder")
    args = parser.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is not beside this checkout: no logs to show")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = args.keep or work
        out.mkdir(parents=True, exist_ok=True)
        shoot(single_page(out), ROOT / "docs" / "report-single.png", 1500, work)
        shoot(multi_page(out), ROOT / "docs" / "report-multi.png", 1500, work)


if __name__ == "__main__":
    main()
