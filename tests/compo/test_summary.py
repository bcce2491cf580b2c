"""The final summary: iterations, how the trained pairs moved, the vote source's lines."""

from compo.summary import source_summary, summary_lines

EXPORT = {"pairs": 4, "master_change": [0.4, -2.0], "base_logprobs": [-40.0, -42.0]}


def test_the_summary_has_the_counts_the_pairs_and_the_sources_lines():
    rows = [{"accepted": True}, {"accepted": False}, {"accepted": False, "failed": "down"}]
    lines = summary_lines(rows, EXPORT, ["finished on 1 of 2 workers"])
    assert lines[0].startswith("ComPO: 1/3 iterations accepted, 1 failed (the oracle abstained")
    assert lines[1] == ("mean change of log pi(y+): +0.100, of log pi(y-): -0.500; mean "
                        "margin +0.500 -> +1.100 (4 trained pairs)")
    assert lines[2] == "finished on 1 of 2 workers"
    assert summary_lines([], {"pairs": 0}, []) == ["ComPO: 0/0 iterations accepted"]


def test_a_source_adds_lines_only_when_it_has_a_summary_method():
    class Ray:
        @staticmethod
        def summary():
            return ["finished on 1 of 2 workers (worker-1 lost at iteration 52)"]

    assert source_summary(Ray()) == ["finished on 1 of 2 workers (worker-1 lost at iteration 52)"]
    assert source_summary(object()) == []
