"""Alerts: fraud grouped by account, delivered at least once to every configured sink."""
