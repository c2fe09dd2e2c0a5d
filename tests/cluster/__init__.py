"""Several backend replicas, their bus and the proxy in front (issue 15): helpers and tests."""
