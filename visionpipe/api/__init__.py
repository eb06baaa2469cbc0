"""The HTTP API: Custom Vision-compatible and visionpipe's own routes, one adapter."""
