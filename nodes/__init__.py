"""The hospital side of the federation: a site's local data, models, training and
evaluation, and the node runtime and `swarm-node` CLI.

A node only ever builds, reads and trains on its own site's data; models leave the site,
samples never do."""
