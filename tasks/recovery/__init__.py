"""Keeping every job alive: leases, the job index and the sweeps that requeue lost or early-acknowledged jobs."""
