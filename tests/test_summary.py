"""fedjax_mi.summary: the tables and the first drop, on hand-made records."""

from fedjax_mi import summary


def test_final_mi_table_on_hand_made_records():
    records = [
        dict(step=s, model=m, dataset="local0", mi_zy=v, mi_zy_floor=f)
        for s, m, v, f in [
            (0, "worker0", 9.0, 9.0),
            (10, "worker0", 1.25, 0.0625),
            (10, "average", 0.5, None),
        ]
    ]
    rows = summary.final_mi_table(records, ["worker0", "average", "worker1"], ["local0"])
    assert rows[2:] == ["| worker0 | 1.250 (0.062) |", "| average | 0.500 |", "| worker1 | - |"]


def test_first_drop_on_hand_made_records():
    def rec(step, model, dataset, zy):
        return dict(
            step=step, epoch=step / 10, model=model, dataset=dataset, mi_xz=1.0, mi_zy=zy, acc=0.5
        )

    records = []
    for step, own, avg in [(0, 1.0, 1.0), (10, 2.0, 1.7), (20, 2.0, 1.5), (30, 2.0, 0.2)]:
        records += [
            rec(step, "worker0", "local0", own),
            rec(step, "worker1", "local1", own),
            rec(step, "worker1", "local0", 0.1),
            rec(step, "average", "local0", avg),
            rec(step, "average", "local1", own),
        ]
    # 1.7 >= 0.8 * 2.0 = 1.6 is not clearly below; 1.5 is.
    assert summary.first_drop(records) == (20, 2.0, "local0")
    assert summary.first_drop(records[:10]) is None
