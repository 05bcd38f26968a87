"""Reliability: crash safety harness, load, backups, and regression tests named after the bugs found."""
