"""The agent's loop: one thread owns the broker connection and the state database, hands long work
to worker threads, and calls the observers' hooks. Imports the core, agents, broker and observe."""
