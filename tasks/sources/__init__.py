"""Sources: opening and checking local files and object-store keys, media formats, discovering batches."""
