"""What the job code tells observers: telemetry, log fields, redaction of secrets, bounds on what is kept."""
