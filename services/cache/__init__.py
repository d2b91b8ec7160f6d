"""Cache service: predictions by key, bounded by bytes, LRU with TTL."""
