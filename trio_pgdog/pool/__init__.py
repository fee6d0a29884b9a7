"""Server connections, pools and their maintenance."""
