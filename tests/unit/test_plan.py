"""`qtests plan`: sample sizes through the console command, and its user errors."""

from __future__ import annotations

import pytest

from pytest_qtests.cli.main import main
from pytest_qtests.gate.plan import make_plan
from pytest_qtests.records import QtestsError
from pytest_qtests.gate.stats import mcnemar_power


def table_rows(output: str) -> dict[int, list[int]]:
    rows = {}
    for line in output.splitlines():
        cells = line.replace(",", "").split()
        if len(cells) == 5 and all(cell.isdigit() for cell in cells):
            rows[int(cells[0])] = [int(cell) for cell in cells[1:]]
    return rows


def test_plan_prints_paired_and_unpaired_item_counts(capsys):
    assert main(["plan", "--base-accuracy", "0.8", "--drop", "5pp", "--repeats", "1,4"]) == 0
    output = capsys.readouterr().out
    rows = table_rows(output)
    plan = make_plan(0.8, 0.05, repeats=(1, 4))
    for row in plan.rows:
        assert rows[row.repeats] == [
            row.paired_items, row.paired_items * row.repeats, row.unpaired_items, row.unpaired_items * row.repeats
        ]
    assert "5 pp accuracy drop from 80%" in output
    assert "disagrees on 17.4% of items" in output


def test_pairing_needs_fewer_items_and_sampled_repeats_fewer_still():
    plan = make_plan(0.8, 0.05, repeats=(1, 4))
    one, four = plan.rows
    assert one.paired_items < one.unpaired_items
    assert four.paired_items < one.paired_items
    assert mcnemar_power(one.paired_items, 0.05, 0.0, plan.discordance) >= 0.8


def test_measured_discordance_and_margin_change_the_answer():
    guessed = make_plan(0.8, 0.05).rows[0].paired_items
    low_discordance = make_plan(0.8, 0.05, discordance=0.08).rows[0].paired_items
    with_margin = make_plan(0.8, 0.05, margin=0.02).rows[0].paired_items
    assert low_discordance < guessed < with_margin


def test_greedy_repeats_do_not_reduce_items():
    plan = make_plan(0.8, 0.05, repeats=(1, 4), discordance=0.08, greedy=True)
    assert plan.rows[0].paired_items == plan.rows[1].paired_items


def test_relative_drop_is_a_share_of_the_base_accuracy(capsys):
    main(["plan", "--base-accuracy", "80%", "--drop", "10%", "--repeats", "1"])
    assert "8 pp accuracy drop from 80%" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--drop", "5x"], "--drop: cannot read '5x'; write 5pp"),
        (["--drop", "5pp", "--greedy"], "with --greedy give --discordance"),
        (["--drop", "5pp", "--discordance", "3%"], "cannot be below the drop"),
        (["--drop", "5pp", "--margin", "5pp"], "must be smaller than the drop"),
        (["--drop", "5pp", "--repeats", "1,x"], "--repeats: cannot read"),
        (["--drop", "95pp"], "below the base accuracy"),
    ],
)
def test_plan_user_errors_are_one_line(capsys, argv, fragment):
    assert main(["plan", "--base-accuracy", "0.8", *argv]) == 2
    error = capsys.readouterr().err
    assert fragment in error
    assert error.count("\n") == 1


def test_base_accuracy_must_be_a_share():
    with pytest.raises(QtestsError):
        make_plan(1.2, 0.05)
