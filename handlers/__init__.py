"""What reacts to events: the arq worker, the extraction job (FFmpeg adapter), the reactor, the reaper."""
