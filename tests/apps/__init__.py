"""The application adapter tests: a package, so that their shared network lives only while they run."""
