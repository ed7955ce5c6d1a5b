"""Side-by-side load benchmarks of medserve against MLServer and MLflow."""
