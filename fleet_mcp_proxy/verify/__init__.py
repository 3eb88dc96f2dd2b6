"""Verifier runs and rewards.

`scoring` is pure (run → reward), `runner` adds the retry policy, `local` runs a verifier against SQLite files in a
child process. Nothing is re-exported here so the child (`_child`) starts without importing anyio.
"""
