"""Scenario files and the runner that plays a whole federation on one machine: one real
`swarm-node run` process per hospital, talking ZeroMQ over loopback TCP."""
