"""The OpenMetrics (Prometheus) endpoint: figures read from the pools and hooks at scrape
time (collector.py), served by a small HTTP task in the proxy's nursery (server.py)."""
