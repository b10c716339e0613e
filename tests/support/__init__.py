"""Helpers the tests share: relays and brokers they start (relay_helpers, authrelay, rabbitnode,
tlscerts), the fault suite's kit (faultkit, netproxy), and the unit tests' fake runtime (fakes) and
hypothesis strategies. Imported as `support.<module>`: tests/ is on sys.path through its conftest."""
