"""Benchmarks: the relay against nginx, haproxy and pproxy on loopback (issue 13).

Run ``python -m bench.run --help``; see ``bench/README.md``.
"""
