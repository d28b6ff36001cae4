"""Progress off a terminal is plain periodic lines with an ETA (issue 32, item 7)."""

from __future__ import annotations

import io

from robustfeat.data import prepare_data
from robustfeat.progress import PlainLines, clock, progress_task
from robustfeat.train import train


def test_plain_lines_every_tenth_of_the_work_with_an_eta_and_a_last_line():
    out = io.StringIO()
    lines = PlainLines("pgd20", total=20, stream=out)
    for _ in range(20):
        lines.advance(info="x")
    printed = out.getvalue().splitlines()
    assert [line.split()[1] for line in printed] == [f"{n}/20" for n in range(2, 21, 2)]
    assert all("ETA" in line for line in printed[:-1])
    assert printed[-1].startswith("pgd20 20/20 (100%)") and " done" in printed[-1]


def test_plain_lines_count_from_where_a_resumed_task_starts():
    out = io.StringIO()
    lines = PlainLines("train", total=100, start=50, stream=out)
    for _ in range(9):
        lines.advance()
    assert out.getvalue() == ""  # 59%: not yet a tenth past 50%
    lines.advance()
    assert out.getvalue().startswith("train 60/100 (60%)")


def test_clock():
    assert clock(5) == "0:05" and clock(125) == "2:05" and clock(3725) == "1:02:05"


def test_off_a_terminal_training_and_evaluation_print_progress_lines(
    tmp_path, capsys, tiny_resnet_config
):
    with progress_task("nothing", 3, enabled=False) as advance:
        advance()
    assert capsys.readouterr().err == ""
    data = prepare_data("shapes", n_train=64, n_test=32)
    train(tiny_resnet_config(progress=True, eval_suite="quick"), tmp_path / "run", data=data)
    err = capsys.readouterr().err
    assert "train 2/2 (100%)" in err  # 64 images / 32 a batch
    assert "fgsm 32/32 (100%)" in err and "pgd10 32/32 (100%)" in err  # each attack
