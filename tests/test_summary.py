"""fedjax_mi.summary: the tables and the drop lines, on hand-made records."""

from fedjax_mi import claims, summary


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


def test_drop_lines_on_hand_made_records():
    def rec(step, model, dataset, zy):
        return dict(step=step, epoch=step / 10, model=model, dataset=dataset, mi_zy_est=zy, acc=0.9)

    def records(avg1):
        out = []
        for step, own, avg in [(0, 1.0, 1.0), (10, 2.0, 1.7), (20, 2.0, 0.5), (30, 2.0, 0.2)]:
            out += [
                rec(step, "worker0", "local0", own),
                rec(step, "worker1", "local1", own),
                rec(step, "worker1", "local0", 0.1),  # the foreign model: not the reference
                rec(step, "average", "local0", avg),
                rec(step, "average", "local1", avg if avg1 else own),
            ]
        return [dict(r, mi_zy_est_floor=0.0) for r in out]

    # Below 0.5 x the own model from step 20 to the end, on local0 only: no drop.
    assert claims.drop_line(records(False), "mi_zy_est") == (
        "- est: no persistent drop (persistent ratio 1.000; rule: < 0.5 on every local dataset)."
    )
    # On both local datasets: a drop from step 20 (two points, to the end of the run).
    assert claims.drop_line(records(True), "mi_zy_est") == (
        "- est: a persistent drop from step 20 (persistent ratio 0.100; "
        "rule: < 0.5 on every local dataset)."
    )
