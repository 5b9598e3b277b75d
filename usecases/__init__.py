"""The application service: what the API and the workers ask of the clip log (load, decide, append, project)."""
