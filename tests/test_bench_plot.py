"""`relay bench --plot`: the chart is a PNG of the documented width, from a run or a saved CSV."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from relay_bench import harness

pytest.importorskip("matplotlib")


def _check_png(path) -> None:
    image = Image.open(path)
    assert image.format == "PNG"
    from relay_bench.plot import WIDTH_PX

    assert image.size[0] == WIDTH_PX and image.size[1] >= 300
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10  # bars, text, grid: not blank


def test_plot_from_a_quick_run_and_from_its_csv(tmp_path) -> None:
    png = tmp_path / "bench.png"
    code = harness.main(["--steps", "20", "--only", "in-process", "--payloads", "S,M",
                         "--out", str(tmp_path), "--plot", str(png)])
    assert code == 0
    _check_png(png)
    (csv_path,) = tmp_path.glob("bench-*.csv")
    again = tmp_path / "again.png"
    assert harness.main(["--plot", str(again), "--from", str(csv_path)]) == 0
    _check_png(again)


def test_from_without_plot_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        harness.main(["--from", str(tmp_path / "x.csv")])
