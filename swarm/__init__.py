"""Core types every site shares: identity and keys, the manifest, the signed update log,
the wire codec, tensor frames and digests, merge rules and topology construction.

Nothing here imports the CLI, the runner, or a socket library other than through
`swarm.transport`."""

__version__ = "0.1.0"
