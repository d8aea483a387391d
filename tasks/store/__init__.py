"""What wsupload keeps in Redis: connections, keys, result documents, fencing, batches, dead letters, dedup."""
