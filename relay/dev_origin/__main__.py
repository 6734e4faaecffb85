"""``python -m relay.dev_origin``: run the dev origin (same as ``aicdn-relay dev-origin``)."""

from __future__ import annotations

from relay.dev_origin.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
