"""The pure core of cliplog: events, clip state, decisions and policies. No I/O, no clock reads."""
