"""observe_many: a batch of observations leaves a histogram as one observe per value (the same
buckets and count; the sum up to float rounding, as it is added in another order)."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram

from mesh.metrics import _LATENCY_BUCKETS_S, observe_many


def _samples(registry: CollectorRegistry) -> dict:
    return {(s.name, s.labels.get("le")): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_observe_many_leaves_the_histogram_as_one_observe_per_value() -> None:
    rng = random.Random(7)
    # bounds themselves, zero, past the last bound and ordinary durations
    values = [rng.choice((0.0, 0.00005, 0.001, 10.0, 1e9)) if i % 3 == 0
              else rng.expovariate(1000) for i in range(3000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("t", "t", buckets=_LATENCY_BUCKETS_S, registry=one)
    h_many = Histogram("t", "t", buckets=_LATENCY_BUCKETS_S, registry=many)
    for value in values:
        h_one.observe(value)
    for start in range(0, len(values), 17):
        observe_many(h_many, values[start:start + 17])
    observe_many(h_many, [])
    expected, got = _samples(one), _samples(many)
    assert math.isclose(expected.pop(("t_sum", None)), got.pop(("t_sum", None)), rel_tol=1e-12)
    assert expected == got
