"""The per-service facade (relay.policy.ServicePolicies): order, reasons, climiter pairing."""

from __future__ import annotations

import pytest

from relay.config import load_config_text
from relay.config.model import (
    AdmissionConfig,
    CCConfig,
    LimiterConfig,
    ShieldConfig,
)
from relay.policy import ALLOW, REASONS, ServicePolicies, Verdict

CONFIG = """
services:
- name: edge
  addr: ":8080"
  listener: {type: tcp}
  handler: {type: http}
  forwarder: {nodes: [{name: origin, addr: "127.0.0.1:8000"}]}
  admission: no-bad
  shield: default
  cc: default
  climiter: per-ip-conns
  rlimiter: per-ip-rate
- name: bare
  addr: ":8081"
  listener: {type: tcp}
  handler: {type: http}
  forwarder: {nodes: [{name: origin, addr: "127.0.0.1:8000"}]}
admissions: [{name: no-bad, matchers: ["192.0.2.0/24"]}]
shields:
- {name: default, window: 5s, maxRequests: 10, blockDuration: 60s, blacklist: ["198.51.100.66"]}
ccs: [{name: default, rateLimit: 1000, burstSize: 2000, blockDuration: 300s, checkInterval: 1s}]
climiters: [{name: per-ip-conns, limits: ["$ 1000", "$$ 2"]}]
rlimiters: [{name: per-ip-rate, limits: ["$$ 5"]}]
"""


@pytest.fixture
def policies() -> ServicePolicies:
    config = load_config_text(CONFIG)
    return ServicePolicies.for_service(config.services[0], config)


def test_built_from_the_service_config(policies: ServicePolicies) -> None:
    assert policies.enabled
    assert policies.admission is not None and policies.admission.name == "no-bad"
    assert policies.shield is not None and policies.shield.name == "default"
    assert policies.cc is not None and policies.climiter is not None
    assert policies.rlimiter is not None
    config = load_config_text(CONFIG)
    bare = ServicePolicies.for_service(config.services[1], config)
    assert not bare.enabled
    assert bare.on_connect("192.0.2.1", 0.0) is ALLOW
    assert bare.on_request("192.0.2.1", 0.0) is ALLOW
    bare.on_disconnect("192.0.2.1")


def test_admission_first_and_leaves_no_state(policies: ServicePolicies) -> None:
    denied = Verdict(False, "admission", 0.0)
    for _ in range(50):
        assert policies.on_connect("192.0.2.7", 0.0) == denied
        assert policies.on_request("192.0.2.7", 0.0) == denied
    assert policies.shield is not None and policies.shield.entries == 0
    assert policies.cc is not None and policies.cc.entries == 0
    assert policies.climiter is not None and policies.climiter.active == 0
    assert policies.rlimiter is not None and policies.rlimiter.entries == 0


def test_shield_blacklist_on_connect_and_request(policies: ServicePolicies) -> None:
    blacklisted = Verdict(False, "shield_blacklist", 0.0)
    assert policies.on_connect("198.51.100.66", 0.0) == blacklisted
    assert policies.on_request("198.51.100.66", 0.0) == blacklisted
    assert policies.climiter is not None and policies.climiter.active == 0


def test_climiter_slot_taken_on_connect_and_given_back(policies: ServicePolicies) -> None:
    ip = "203.0.113.5"
    assert policies.on_connect(ip, 0.0) is ALLOW
    assert policies.on_connect(ip, 0.0) is ALLOW
    assert policies.on_connect(ip, 0.0) == Verdict(False, "climiter", 1.0)
    policies.on_disconnect(ip)
    assert policies.on_connect(ip, 0.0) is ALLOW
    policies.on_disconnect(ip)
    policies.on_disconnect(ip)
    assert policies.climiter is not None and policies.climiter.active == 0
    assert policies.climiter.entries == 0


def test_request_order_shield_then_rlimiter(policies: ServicePolicies) -> None:
    ip = "203.0.113.6"
    verdicts = [policies.on_request(ip, 10.0 + i * 0.01) for i in range(11)]
    # The rlimiter ($$ 5, burst 6) refuses from the 7th request; the shield comes first and
    # counts every request it passes on, so the 11th inside 5 s starts a shield block.
    assert [v.reason for v in verdicts] == [""] * 6 + ["rlimiter"] * 4 + ["shield"]
    assert verdicts[6] == Verdict(False, "rlimiter", 1.0)
    assert verdicts[10] == Verdict(False, "shield", 60.0)
    assert policies.on_connect(ip, 11.0).reason == "shield"


def test_cc_reason_through_the_facade() -> None:
    p = ServicePolicies(cc=CCConfig("cc", rate_limit=10, burst_size=10, block_duration=5.0))
    for i in range(200):
        p.on_request("203.0.113.9", i / 200)
    assert p.on_request("203.0.113.9", 1.0) == Verdict(False, "cc", 5.0)
    assert p.on_request("203.0.113.10", 1.0) is ALLOW


def test_untracked_sums_the_policies() -> None:
    p = ServicePolicies(
        shield=ShieldConfig("s", max_requests=1, block_duration=60.0),
        climiter=LimiterConfig("c", ("$$ 1",)),
        max_entries=1,
    )
    p.on_request("a", 0.0)
    p.on_request("a", 0.0)  # "a" blocked: the shield's only entry is held
    assert p.on_request("b", 0.0) is ALLOW  # untracked by the shield
    assert p.on_connect("c", 0.0) is ALLOW
    assert p.on_connect("d", 0.0) == Verdict(False, "climiter", 1.0)  # table full: closed
    assert p.untracked() == 2


def test_every_reason_is_in_the_metric_label_set() -> None:
    flooder = "203.0.113.1"
    p = ServicePolicies(
        AdmissionConfig("a", matchers=("192.0.2.1",)),
        ShieldConfig("s", max_requests=3, blacklist=("192.0.2.2",), whitelist=(flooder,)),
        CCConfig("cc", rate_limit=10, burst_size=10),
        LimiterConfig("c", ("$$ 1",)),
        LimiterConfig("r", ("$ 1000", "10.0.0.0/8 1")),
    )
    seen = {
        p.on_request("192.0.2.1", 0.0).reason,  # admission
        p.on_request("192.0.2.2", 0.0).reason,  # shield_blacklist
        p.on_connect("192.0.2.3", 0.0).reason,
        p.on_connect("192.0.2.3", 0.0).reason,  # climiter
    }
    seen |= {p.on_request("10.0.0.1", 0.0).reason for _ in range(4)}  # rlimiter, shield
    for i in range(200):
        p.on_request(flooder, i / 200)
    seen.add(p.on_request(flooder, 1.0).reason)  # cc
    assert seen == {"", *REASONS}
