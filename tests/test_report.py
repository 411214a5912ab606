import json

from benchmarks.report import pass_at_k, write_report


def test_pass_at_k_matches_brute_force():
    from itertools import combinations

    n, c = 6, 2
    samples = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        combos = list(combinations(samples, k))
        brute = sum(any(s) for s in combos) / len(combos)
        assert abs(pass_at_k(n, c, k) - brute) < 1e-12


def test_write_report_json_and_markdown(tmp_path):
    write_report(tmp_path, "T", {"accuracy": 0.5, "baseline": 0.25}, details=[{"id": 1}],
                 tables={"by level": [{"level": 1, "acc": 1.0}]})
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["accuracy"] == 0.5 and data["details"] == [{"id": 1}]
    md = (tmp_path / "report.md").read_text()
    assert "| accuracy | 0.5 |" in md and "## by level" in md
