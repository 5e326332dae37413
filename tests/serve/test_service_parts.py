"""Parts of the service without HTTP: token buckets, quotas, the extraction monitor, key states."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlwarden.errors import ParameterError
from mlwarden.serve import MonitorSettings, ServiceConfig, ServiceDatabase, build_service
from mlwarden.serve.audit import AuditEntry, AuditLog
from mlwarden.serve.keys import KeyStore
from mlwarden.serve.limits import DailyQuota, RateLimiter, seconds_to_next_utc_day
from mlwarden.serve.monitor import ExtractionMonitor, shapiro_statistic
from mlwarden.serve.service import GuardRejection


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("k", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", 2.0, 3) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("k", 2.0, 3) == 0.0
    assert limiter.take("other", 2.0, 3) == 0.0


def test_daily_quota_resumes_from_audit_log(tmp_path: Path) -> None:
    with ServiceDatabase(tmp_path / "s.db") as database:
        audit = AuditLog(database)
        now = time.time()
        for counted in (True, True, False):
            audit.record(AuditEntry(now, "key", None, "POST", "/v1/predict", 200, "accepted", None, counted, 1, 1.0))
        audit.close()
        quota = DailyQuota(database)
    assert quota.used("key") == 2
    assert quota.count("key", 3) == 0
    assert quota.count("key", 3) > 0
    assert 1 <= seconds_to_next_utc_day(now) <= 86400


def test_monitor_flags_small_steps_not_natural_images(lenet, fashion_test) -> None:
    monitor = ExtractionMonitor(MonitorSettings())
    natural = fashion_test.images[torch.randperm(10000, generator=torch.Generator().manual_seed(3))[:400]]
    seeds = fashion_test.images[5000:5050].clone().requires_grad_(True)
    logits = lenet(seeds)
    (gradient,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), seeds)
    steps = [seeds.detach()]
    for sign in (1.0, -1.0, 1.0):
        steps.append((steps[-1] + sign * 0.1 * gradient.sign()).clamp(0, 1))
    synthetic = torch.cat(steps)
    with torch.no_grad():
        benign = monitor.observe("benign", natural, lenet(natural).argmax(1))
        attack = monitor.observe("attacker", synthetic, lenet(synthetic).argmax(1))
    assert benign.flagged is False
    assert benign.statistic is not None and benign.statistic > 0.94
    assert attack.flagged is True
    assert attack.newly_flagged is True


def test_monitor_skips_repeats_and_bounds_keys() -> None:
    monitor = ExtractionMonitor(MonitorSettings(max_keys=2, min_distances=3, check_every=1))
    image = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    classes = torch.zeros(5, dtype=torch.int64)
    verdict = monitor.observe("a", image.repeat(5, 1, 1, 1), classes)
    assert verdict.distances == 0
    assert monitor.snapshot()[0]["repeats"] == 4
    monitor.observe("b", image, classes[:1])
    monitor.observe("c", image, classes[:1])
    assert [state["key_id"] for state in monitor.snapshot()] == ["b", "c"]


def test_shapiro_statistic_of_constant_values_is_zero() -> None:
    assert shapiro_statistic(np.ones(50)) == 0.0
    assert shapiro_statistic(np.random.default_rng(0).normal(size=200)) > 0.98


@pytest.mark.parametrize("action", ["block", "throttle", "alert"])
def test_monitor_action_sets_key_status(served_lenet, tmp_path: Path, action: str) -> None:
    config = ServiceConfig(monitor=MonitorSettings(action=action, min_distances=3, check_every=1, threshold=0.999))
    service = build_service(served_lenet, tmp_path / "s.db", config)
    try:
        key, token = service.keys.create("x", ["predict"], rate=100, burst=100)
        principal = service.authorize(token, "predict", "127.0.0.1", {})
        images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 0.2
        service.predict(principal, images, {})
        assert len(service.alerts()) == 1
        expected = {"block": "blocked", "throttle": "throttled", "alert": "active"}[action]
        assert service.keys.get(key.key_id).status == expected
        if action == "block":
            with pytest.raises(GuardRejection, match="key blocked"):
                service.authorize(token, "predict", "127.0.0.1", {})
            service.keys.set_status(key.key_id, "active", "cleared")
            cleared = service.authorize(token, "predict", "127.0.0.1", {})
            service.predict(cleared, images[:5], {})
            assert service.monitor.snapshot()[0]["queries"] == 5
    finally:
        service.close()


def test_key_store_rejects_bad_input(tmp_path: Path) -> None:
    with ServiceDatabase(tmp_path / "s.db") as database:
        keys = KeyStore(database)
        with pytest.raises(ParameterError, match="scopes"):
            keys.create("x", ["root"])
        with pytest.raises(ParameterError, match="name"):
            keys.create("", ["predict"])
        with pytest.raises(ParameterError, match="rate"):
            keys.create("x", ["predict"], rate=0)
        assert keys.authenticate(None).reason == "missing API key"
        assert keys.authenticate("mlw_short").reason == "malformed API key"


def test_database_rejects_missing_folder_and_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="does not exist"):
        ServiceDatabase(tmp_path / "missing" / "s.db")
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ParameterError, match="not a usable SQLite database"):
        ServiceDatabase(foreign)
