"""Every committed figure is what the code draws from its run today (decoded pixels equal).

Guards refactors of ``fa2bench/read/plots`` (a split must not move a pixel) and keeps the committed figures
regenerated after a deliberate change (redraw with ``fa2bench report`` / ``fa2bench plot``).
"""
import pytest

from tests.replot_runs import RESULTS, pixels, redraw


@pytest.mark.slow
def test_committed_figures_are_what_the_code_draws(tmp_path):
    drawn = redraw(tmp_path)
    committed = {name: path for name, path in drawn.items() if (RESULTS / name).exists()}
    assert len(committed) >= 50, "the committed runs' figures were not found"
    differ = [name for name, path in committed.items() if pixels(path) != pixels(RESULTS / name)]
    assert not differ, f"redraw these and commit them: {differ}"
