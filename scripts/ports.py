"""`python scripts/ports.py answer|refuse`: exits 0 when 127.0.0.1 answers on both PostgreSQL's and Redis's ports
(5432, 6379), or, with `refuse`, when it answers on neither (else it names the ones that answer and exits 1)."""

import socket
import sys

PORTS = (5432, 6379)


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


answering = [port for port in PORTS if answers(port)]
if sys.argv[1] == "refuse":
    sys.exit(f"127.0.0.1 answers on {answering}, where nothing should" if answering else 0)
sys.exit(0 if len(answering) == len(PORTS) else 1)
