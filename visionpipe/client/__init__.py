"""The HTTP client and the `visionpipe` command line built on it."""
