"""The HTTP/WebSocket API (Litestar), the web UI's static files and the `cliplog` command line."""
