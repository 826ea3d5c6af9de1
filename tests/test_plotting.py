"""fedjax_mi.plotting: the figures of a run's metrics file."""

import os

import pytest

from fedjax_mi import metrics_io, plotting


@pytest.mark.slow
def test_plot_from_metrics_file(tiny_run):
    cfg, _, _ = tiny_run
    paths = plotting.plot_run(cfg.out)
    assert [os.path.basename(p) for p in paths] == ["mi.png", "accuracy.png", "info_plane.png"]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_of_records_without_floors(tmp_path):
    # metrics.jsonl of runs made before the floors were measured still plot.
    records = [
        dict(
            step=s,
            epoch=s / 10,
            model=m,
            dataset=d,
            mi_xz=1.0 + s / 10,
            mi_zy=0.5,
            acc=0.5,
            loss=None,
        )
        for s in (0, 10)
        for m in ("worker0", "average")
        for d in ("local0", "test")
    ]
    for r in records:
        if r["dataset"] == "test":
            r["mi_xz"] = r["mi_zy"] = None
    metrics_io.write_records(str(tmp_path / "metrics.jsonl"), records)
    paths = plotting.plot_run(str(tmp_path))
    assert all(os.path.getsize(p) > 1000 for p in paths)


@pytest.mark.parametrize("with_mi, panels", [(True, 2), (False, 1)])
def test_tradeoff_draws_the_mi_panel_only_when_measured(tmp_path, with_mi, panels):
    import matplotlib.image

    points = [
        dict(acc=0.5 + i / 10, mi_zy=1.0 + i if with_mi else None, bytes_sent=i * 1e6)
        | dict(protocol=f"p{i}", split="iid")
        for i in range(3)
    ]
    path = plotting.plot_tradeoff(points, str(tmp_path / "t.png"))
    height, width = matplotlib.image.imread(path).shape[:2]
    # 5.5 inches a panel, 4.2 high (dpi 120).
    assert (width, height) == (round(5.5 * panels * 120), round(4.2 * 120))


def test_head_bound_far_below_does_not_stretch_the_zy_axis():
    """A foreign model's head bound at -20 bits: the I(Z;Y) axis stays at the
    estimates' range (0.2-2.5 bits and their floors at 0.1) plus 5%, the bound
    is marked at the axis's edge, and a note names its extreme."""
    records = [
        dict(
            step=s,
            epoch=s / 10,
            model=m,
            dataset="local0",
            mi_xz_kde=3.0,
            mi_zy_probe=2.5 if m == "worker0" else 0.2,
            mi_zy_probe_floor=0.1,
            mi_zy_head=-20.0 if m == "worker1" else 2.0,
        )
        for s in (0, 10)
        for m in ("worker0", "worker1", "average")
    ]
    fig = plotting.mi_figure(records)
    low, high = fig.axes[1].get_ylim()
    assert low == pytest.approx(-0.125) and high == pytest.approx(2.625)  # 0..2.5, 5% of 2.5
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert any("-20.0 bits" in t for t in texts), texts
    plotting._pyplot().close(fig)
