"""What wsupload keeps in Redis: connections, keys, result documents, fencing, batches, dead letters, dedup.

``lua/`` holds every Lua script wsupload runs in Redis, one ``.lua`` file each, and their loader.
"""
