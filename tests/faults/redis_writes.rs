//! redis_writes
