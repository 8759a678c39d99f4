import numpy as np
import pytest

from test_evaluate import example

from nanobias.metrics import bias_metrics, format_table, mean_std, metrics_with_breakdown


def test_bias_metrics_on_hand_made_predictions():
    # ambiguous: 2 unknown, 3 biased (neg->0, nonneg->1), 1 counter-biased (neg->1), 1 invalid
    ambig = [example("ambig", "neg"), example("ambig", "nonneg"), example("ambig", "neg"), example("ambig", "nonneg"),
             example("ambig", "neg"), example("ambig", "neg"), example("ambig", "nonneg")]
    ambig_preds = [2, 2, 0, 1, 0, 1, None]
    # disambiguated: labels 0, 1, 0, 1; answers right, right, biased-but-wrong (nonneg->1 on label 0), unknown
    disamb = [example("disambig", "neg", 0), example("disambig", "nonneg", 1), example("disambig", "nonneg", 0),
              example("disambig", "neg", 1)]
    disamb_preds = [0, 1, 1, 2]
    completions = ["x" * n for n in range(1, 12)]  # lengths 1..11
    m = bias_metrics(ambig + disamb, ambig_preds + disamb_preds, completions)
    assert m["acc_ambig"] == pytest.approx(2 / 7)
    # non-unknown valid ambiguous answers: 4, of which 3 biased -> 2 * 3/4 - 1 = 0.5
    assert m["s_amb"] == pytest.approx((1 - 2 / 7) * 0.5)
    assert m["acc_disambig"] == pytest.approx(2 / 4)
    # non-unknown disambiguated answers: 0 (neg, biased), 1 (nonneg, biased), 1 (nonneg, biased) -> 2 * 3/3 - 1
    assert m["s_dis"] == pytest.approx(1.0)
    assert m["unknown_disambig"] == pytest.approx(1 / 4)  # the last disambiguated answer is unknown
    assert m["biased_ambig"] == pytest.approx(3 / 7)
    assert m["invalid_rate"] == pytest.approx(1 / 11)
    assert m["mean_len"] == pytest.approx(6.0)
    assert m["n"] == 11


def test_counter_stereotypical_answers_give_negative_scores_and_unknown_gives_zero():
    items = [example("ambig", "neg"), example("ambig", "nonneg")]
    m = bias_metrics(items, [1, 0], [" a", " b"])  # both counter-biased
    assert m["acc_ambig"] == 0 and m["s_amb"] == pytest.approx(-1.0)
    m = bias_metrics(items, [2, 2], [" a", " b"])
    assert m["acc_ambig"] == 1 and m["s_amb"] == 0.0


def test_breakdown_per_category_and_table():
    items = [example("ambig", category="Age"), example("ambig", category="Age"), example("ambig", category="SES")]
    out = metrics_with_breakdown(items, [2, 0, 0], [" u", " g", " g"])
    assert out["acc_ambig"] == pytest.approx(1 / 3)
    assert out["per_category"]["Age"]["acc_ambig"] == pytest.approx(0.5)
    assert out["per_category"]["SES"]["acc_ambig"] == 0.0 and out["per_category"]["SES"]["s_amb"] == pytest.approx(1.0)
    table = format_table({"base": out})
    assert "| base | 0.333 |" in table and table.count("\n") == 3
    del out["unknown_disambig"]  # a metric an older run did not write shows as "-"
    assert "| - |" in format_table({"old": out})


def test_mean_std_through_nested_dicts():
    runs = [{"acc": 0.5, "n": 4, "per_category": {"Age": {"acc": 0.25, "n": 2}}, "heldout": {}},
            {"acc": 0.75, "n": 4, "per_category": {"Age": {"acc": 1.0, "n": 3}}, "heldout": {}},
            {"acc": 0.0, "n": 4, "per_category": {"Age": {"acc": 0.5, "n": 2}}, "heldout": {}}]
    mean, std = mean_std(runs)
    assert mean["acc"] == pytest.approx(np.mean([0.5, 0.75, 0.0])) and std["acc"] == pytest.approx(
        np.std([0.5, 0.75, 0.0], ddof=1))
    assert mean["n"] == 4 and type(mean["n"]) is int and std["n"] == 0.0  # an equal count stays an int
    assert mean["per_category"]["Age"]["n"] == pytest.approx(7 / 3)  # counts that differ are averaged
    assert std["per_category"]["Age"]["acc"] == pytest.approx(np.std([0.25, 1.0, 0.5], ddof=1))
    assert mean["heldout"] == std["heldout"] == {}
    assert mean_std(runs[:1]) == (runs[0], {"acc": 0.0, "n": 0.0, "per_category": {"Age": {"acc": 0.0, "n": 0.0}},
                                            "heldout": {}})
    with pytest.raises(ValueError, match="different keys"):
        mean_std([{"acc": 0.5}, {"acc": 0.5, "n": 1}])


def test_format_table_shows_mean_and_std_for_the_rows_given_one():
    m = {k: 0.5 for k in ("acc_ambig", "acc_disambig", "s_amb", "s_dis", "unknown_disambig", "invalid_rate")}
    table = format_table({"base": {**m, "mean_len": 20.0}, "grpo": {**m, "mean_len": 21.0}},
                         {"grpo": {**dict.fromkeys(m, 0.031), "mean_len": 2.5}})
    assert "| base | 0.500 | 0.500 |" in table and "| grpo | 0.500 ± 0.031 |" in table and "| 21.0 ± 2.5 |" in table
