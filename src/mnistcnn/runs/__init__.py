"""One run from start to end (train, resume, evaluate, predict, rerun) and parallel jobs."""
