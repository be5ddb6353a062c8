"""Switching from the running revision to the next: the strategies (strategy.py picks
one per revision) and what the start-first ones run on (slots, doors, the proxy, the
slot launcher).

Kept free of imports: the slot launcher is `python -m entrypoint.switching.launch`,
and every import here would slow the start of each web process.
"""
