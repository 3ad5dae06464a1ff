"""Usage: what each client's requests cost, counted from the engine's answers, kept in a
SQLite ledger, and held to quotas.

    windows.py   the [usage] timezone, local hours and days, quota windows (pure)
    rollup.py    records summed into hourly and daily rows; time to first token histograms (pure)
    ledger.py    the SQLite ledger in the state dir: rows in, totals and window use out
"""
