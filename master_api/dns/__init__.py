"""Smart DNS: an authoritative DNS server that answers the service's host names with the
healthy edges nearest to each client (``aicdn-master dns``; master_api/README.md).

Modules, one job each: ``config`` (typed settings), ``regions`` (country -> region, region
fallback order), ``geo`` (IP -> country, offline), ``edges`` (the healthy-edge view and its
refresh), ``wire`` (EDNS Client Subnet, reply encoding), ``query`` (reading a query: a fast
path for the common shape, dnslib for the rest), ``responder`` (one query -> one reply,
sans-I/O), ``server`` (UDP/TCP sockets), ``main`` (the process).
"""

from master_api.dns.config import DnsConfig
from master_api.dns.edges import EdgeView, EdgeWatcher, build_view
from master_api.dns.responder import DnsStats, Responder
from master_api.dns.server import DnsServer

__all__ = [
    "DnsConfig",
    "DnsServer",
    "DnsStats",
    "EdgeView",
    "EdgeWatcher",
    "Responder",
    "build_view",
]
