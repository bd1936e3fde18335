"""World Models pipeline: collect, shard, V, encode, M, C, play. Importing it has no side effects."""
