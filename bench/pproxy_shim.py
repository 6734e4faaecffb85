"""Run pproxy (``python -m bench.pproxy_shim ARGS``) on uvloop with today's uvloop.

pproxy 2.7.9 calls ``uvloop.install()`` and then ``asyncio.get_event_loop()``, which uvloop
0.21+ refuses when no loop is set ("There is no current event loop"). This shim makes
``install`` also create and set the loop, then hands over to pproxy's own ``main``.
"""

from __future__ import annotations

import asyncio

import uvloop


def _install() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


def main() -> None:
    uvloop.install = _install
    from pproxy.server import main as pproxy_main

    pproxy_main()


if __name__ == "__main__":
    main()
