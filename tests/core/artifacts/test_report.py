import pytest

from squeezer.core.artifacts.report import build_report

BASELINE = dict(
    accuracy=98.0, params=10, nonzero_params=10, flops=100, size_bytes=4000, latency_ms=1.0, latency_ms_batch32=20.0
)


def test_ratio_and_drop_come_from_file_bytes_and_accuracies():
    compressed = dict(BASELINE, accuracy=97.5, nonzero_params=2, flops=50, size_bytes=100)
    report = build_report(
        method="lwct",
        metric="top1",
        max_drop=1.0,
        drop_type="absolute",
        target_met=True,
        baseline=BASELINE,
        compressed=compressed,
        layers=[],
        trials=[],
    )
    assert report["compression_ratio"] == 40.0
    assert report["accuracy_drop"] == pytest.approx(0.5)
    assert report["flops_reduction"] == 2.0
    assert report["metric"] == "top1" and report["target"] == {"max_drop": 1.0, "drop_type": "absolute"}


def test_missing_measure_is_refused():
    with pytest.raises(ValueError, match="size_bytes"):
        build_report(
            method="lwct",
            metric="top1",
            max_drop=1.0,
            drop_type="absolute",
            target_met=False,
            baseline=BASELINE,
            compressed={"accuracy": 1.0},
            layers=[],
            trials=[],
        )


def test_macs_and_their_flops_alias_hold_the_same_counts():
    """ "flops" always held multiply-accumulates; "macs" names them, and the old keys stay as aliases."""
    baseline = {key: value for key, value in BASELINE.items() if key != "flops"} | {"macs": 400}
    report = build_report(
        method="filter",
        metric="top1",
        max_drop=1.0,
        drop_type="absolute",
        target_met=True,
        baseline=baseline,
        compressed=dict(BASELINE, macs=100),
        layers=[],
        trials=[],
    )
    assert report["baseline"]["macs"] == report["baseline"]["flops"] == 400
    assert report["compressed"]["macs"] == report["compressed"]["flops"] == 100
    assert report["macs_reduction"] == report["flops_reduction"] == 4.0
