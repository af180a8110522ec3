"""Issue 15's capacity benchmark: one entry point, three parts.

- `setup`: (b) CPU ms per call over a call's whole life and the sustained set-up rate, one process pinned to
  one core, SQLite and PostgreSQL, TWILIO_CPS 50 / 200 / 1000 (capacity_setup.py);
- `nginx`: (c) two `announcer serve` processes behind nginx on one PostgreSQL: the aggregate rate and the
  account-wide CPS held (capacity_setup.py);
- `streams`: (a) steady streaming at 300 / 600 / 1,000 concurrent calls (capacity_streams.py).

Usage: .venv/bin/python benchmarks/capacity.py {setup,nginx,streams} [options; --help for each]
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("setup", "nginx", "streams"):
        raise SystemExit(__doc__)
    command, rest = argv[0], argv[1:]
    # Imported when asked for: each part's module (and its peers) loads only for its own run.
    if command == "streams":
        import capacity_streams

        capacity_streams.main(rest)
    else:
        import capacity_setup

        getattr(capacity_setup, command)(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
