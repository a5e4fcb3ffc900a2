"""Metrics of verify, on hand-made logits: margins and noise in logit-std units, and the near-tie hint."""
import numpy as np

from evim_deploy.verify import Metrics, VerifyReport, check


def _logits(margin: float, n: int = 64, classes: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit-std Gaussian logits whose top-1 leads the runner-up by ``margin`` (in logit std)."""
    x = np.random.default_rng(seed).standard_normal((n, classes))
    x /= x.std(-1, keepdims=True)
    order = np.sort(x, -1)
    x[np.arange(n), x.argmax(-1)] = order[:, -2] + margin
    return x


def test_margin_and_noise_are_measured_in_logit_std():
    reference = _logits(margin=1.5)
    noise = np.random.default_rng(1).standard_normal(reference.shape) * 0.1
    m = Metrics.compare(reference, reference + noise)
    assert abs(m.margin - 1.5) < 0.1 and abs(m.noise - 0.1) < 0.01
    assert m.top1 == 1.0 and m.clear_flips == 0


def test_near_ties_flip_top1_and_the_report_says_why():
    reference = _logits(margin=0.05)
    test = reference + np.random.default_rng(2).standard_normal(reference.shape) * 0.1
    m = Metrics.compare(reference, test)
    assert m.near_ties and m.clear_flips == 0 and m.cosine > 0.99 and m.top1 < 0.9
    report = VerifyReport("x.onnx", "int8", {"cosine": 0.99, "top1": 0.97}, {"images": m})
    report.failures = check(m, report.thresholds, "images")
    assert report.failures == [f"images top-1 agreement {m.top1:.1%} < 97%"]
    assert len(report.hints()) == 1 and "near-tie" in report.hints()[0] and "trained" in report.hints()[0]


def test_no_hint_for_a_file_that_is_simply_wrong():
    reference = _logits(margin=1.5)
    wrong = np.random.default_rng(3).standard_normal(reference.shape)  # noise far above the margin
    m = Metrics.compare(reference, wrong)
    report = VerifyReport("x.onnx", "int8", {"cosine": 0.99, "top1": 0.97}, {"images": m})
    report.failures = check(m, report.thresholds, "images")
    assert any("cosine" in f for f in report.failures) and any("top-1" in f for f in report.failures)
    assert report.hints() == []  # a failing cosine is not excused by near-ties


def test_no_hint_when_a_clear_decision_flips():
    """Small noise everywhere, but one input with a wide margin gets another class: a real error."""
    reference = _logits(margin=0.05)
    test = reference + np.random.default_rng(4).standard_normal(reference.shape) * 0.01
    reference[0, 0] = reference[0].max() + 2.0  # a clear decision, margin 2 logit std ...
    test[0, 1] = test[0].max() + 1.0  # ... that the file changes
    m = Metrics.compare(reference, test)
    report = VerifyReport("x.onnx", "int8", {"cosine": 0.99, "top1": 0.995}, {"images": m})
    report.failures = check(m, report.thresholds, "images")
    assert m.clear_flips == 1 and not m.near_ties and m.cosine > 0.99
    assert report.failures and report.hints() == []
