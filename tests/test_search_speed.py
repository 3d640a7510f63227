import json

import pytest
from commands import run_module

from benchmarks.search_speed import SEARCHES


@pytest.mark.real_data
def test_quick_run_times_the_three_searches_side_by_side(real_data_root, tmp_path):
    out = tmp_path / "search.json"
    result = run_module("benchmarks.search_speed", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    searches = json.loads(out.read_text())["searches"]
    assert list(searches) == list(SEARCHES)
    for search in searches.values():
        # Every trial ran at least one epoch and at most two (--quick); a worker is never busier
        # than the whole search took.
        assert search["trials"] == 4 and 4 <= search["epochs"] <= 8
        assert 0 < search["best_val_acc"] <= 1 and all(0 < b <= 1 for b in search["busy"])
        # A worker's last trial ends before the search does, by less than the whole search.
        assert all(0 <= s < search["wall_s"] for s in search["done_before_end_s"])
    assert len(searches["3"]["busy"]) == 2 and len(searches["1"]["busy"]) == 1
    assert out.with_suffix(".md").read_text().startswith("`python -m benchmarks.search_speed")
    assert "2 workers x 1 thread against 1 x 2:" in result.stdout
