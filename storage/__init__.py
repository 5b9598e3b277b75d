"""Where sources are read from and clips are written to: the local folders or an S3-compatible bucket."""
