"""The declare benchmark's own arithmetic and options (the run itself is `make bench-declare`)."""

from __future__ import annotations

import pytest

from bench.declare import _percentile, parse_args


def test_percentiles_are_order_statistics_of_the_samples() -> None:
    samples = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert _percentile(samples, 0.5) == 0.3
    assert _percentile(samples, 0.99) == 0.5
    assert _percentile(samples, 0.0) == 0.1


def test_sizes_must_grow_and_samples_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--sizes", "10", "100"]).sizes == [10, 100]
    for argv in (["--sizes", "100", "10"], ["--sizes", "0"], ["--samples", "0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert "--sizes must be positive and increasing" in capsys.readouterr().err
