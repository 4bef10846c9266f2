"""Numeric options are checked before anything starts (runtime/argtypes.py): a bad value is
argparse's usage error naming the option, exit 2, no traceback and no run."""

from __future__ import annotations

import argparse

import pytest

from sdqkd import bench
from sdqkd.argtypes import integer, number, numbers
from sdqkd.cli import build_parser


def test_the_types_accept_their_range_and_name_what_they_want():
    assert integer(1)("3") == 3 and integer(0)("0") == 0
    assert number(0)("0") == 0.0 and number(0, strict=True)("1e-3") == 1e-3
    assert numbers(0, strict=True)("1, 5,20") == [1.0, 5.0, 20.0] and numbers(0)("") == []
    for parse, text, message in [
        (integer(1), "0", "must be an integer >= 1, not '0'"),
        (integer(1), "2.5", "must be an integer >= 1, not '2.5'"),
        (number(0), "-1", "must be a number >= 0, not '-1'"),
        (number(0, strict=True), "0", "must be a number > 0, not '0'"),
        (number(0), "nan", "must be a number >= 0, not 'nan'"),
        (number(0), "inf", "must be a number >= 0, not 'inf'"),
        (numbers(0, strict=True), "1,x", "each of '1,x' must be a number > 0, not 'x'"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value) == message


BAD_BENCH_OPTIONS = [
    ("link", ["--pairs", "0"], "--pairs: must be an integer >= 1, not '0'"),
    ("link", ["--rtt", "abc"], "--rtt: each of 'abc' must be a number > 0, not 'abc'"),
    ("link", ["--seconds", "-1"], "--seconds: must be a number > 0, not '-1'"),
    ("link", ["--memory", "5e5,x"], "--memory: each of '5e5,x' must be a number > 0, not 'x'"),
    ("link", ["--block-bits", "0"], "--block-bits: must be a number > 0, not '0'"),
    ("net", ["--nodes", "1"], "--nodes: must be an integer >= 2, not '1'"),
    ("net", ["--workers", "-1"], "--workers: must be an integer >= 0, not '-1'"),
    ("engine", ["--repeat", "0"], "--repeat: must be an integer >= 1, not '0'"),
    ("engine", ["--memory-sizes", "0.5,0"], "--memory-sizes: each of '0.5,0' must be a number > 0, not '0'"),
    ("kms", ["--clients", "0"], "--clients: must be an integer >= 1, not '0'"),
    ("apps", ["--seconds", "nan"], "--seconds: must be a number > 0, not 'nan'"),
    ("etsi020", ["--batch", "0"], "--batch: must be an integer >= 1, not '0'"),
    ("gnmi", ["--n", "0"], "--n: must be an integer >= 1, not '0'"),
    ("restconf", ["--links", "0"], "--links: must be an integer >= 1, not '0'"),
    ("opot", ["--nodes", "2"], "--nodes: must be an integer >= 3, not '2'"),
    ("reliability", ["--keys", "-1"], "--keys: must be an integer >= 0, not '-1'"),
    ("node", ["--clock-scale", "0"], "--clock-scale: must be a number > 0, not '0'"),
    ("codegen", ["--runs", "0"], "--runs: must be an integer >= 1, not '0'"),
]


@pytest.mark.parametrize(("name", "argv", "message"), BAD_BENCH_OPTIONS, ids=lambda v: str(v))
def test_a_benchmark_refuses_a_bad_number_before_it_starts(capsys, name, argv, message):
    with pytest.raises(SystemExit) as e:
        bench.run(name, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"sdqkd bench {name}: error: argument {message}" in err
    assert "Traceback" not in err


def test_every_benchmark_is_covered():
    assert {name for name, _, _ in BAD_BENCH_OPTIONS} == set(bench.available())


@pytest.mark.parametrize("argv", [["demo", "--seconds", "0"], ["net", "up", "--state-dir", "x", "--timeout", "-1"],
                                  ["health", "--config", "x", "--timeout", "0"]])
def test_the_cli_refuses_a_bad_number(capsys, argv):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "must be a number > 0" in capsys.readouterr().err
