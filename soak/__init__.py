"""`cliplog soak`: a mixed-fault soak of the whole real topology (README "The soak").

`runner` runs it; `topology` starts the processes (runtime.processes); `workload` holds the clip behaviours and the
clients that register clips and act as a person; `faults` the fault kinds; `feeds` the feed clients that record
what they receive; `checks` the pure checks; `report` the report. An entry point: it sits at the top layer with the
wiring and the command line (tests/unit/test_layers.py).
"""
