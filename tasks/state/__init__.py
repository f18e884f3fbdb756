"""The state store: where pool state lives between jobs (the StateStore port's adapters).

================  =============================================================
module            what is inside
================  =============================================================
keys              every Redis key name, and the schema behind them
redis_store       RedisStore: the real store; multi-key transitions are Lua
                  scripts (``lua/``) or WATCH/MULTI
memory_store      InMemoryStore: the same contract in a dict (unit tests, the
                  simulator)
lua/              the Lua scripts; each names the race it guards
================  =============================================================
"""
