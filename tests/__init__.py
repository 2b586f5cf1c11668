"""The test suite: every test composes the real config tree and runs on the real data (``make data``)."""
