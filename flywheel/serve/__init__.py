"""`flywheel serve`: the policy server on the GPU host (docs/protocol.md, "Policy server")."""
