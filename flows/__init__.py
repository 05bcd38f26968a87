"""Channel-independent conversations and criteria scoring: no network, no DB session, no platform types."""
