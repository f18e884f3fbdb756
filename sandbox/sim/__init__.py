"""``warmpool simulate``: replay a demand trace against capacity policies on the pool's own code.

The simulation drives the product's PoolService, planner and policies on the in-memory
store and a FakeCloud, on a virtual clock (engine.py); trace.py reads the trace,
report.py turns runs into the JSON, table and plot of the contract (docs/economics.md).
"""
