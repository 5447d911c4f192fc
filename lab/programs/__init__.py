"""Helper programs of the lab, run as `sys.executable <file> <args>` (see lab.proc.program), not imported."""
