"""WaveSpeed's side: the HTTP client, the multipart body, the retry policy and the shared rate limit."""
