//! Building shards from raw image collections (`tessera shard`).
