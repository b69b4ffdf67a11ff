"""Developer tools, kept out of what a hospital installs and runs: the model-exchange
benchmark and the fuzzer of every reader of untrusted bytes, behind the `swarm-dev` CLI
(and `swarm-node bench` / `swarm-node fuzz` where this package is installed).

Imports `swarm` and `nodes`; nothing there imports this package except lazily."""
