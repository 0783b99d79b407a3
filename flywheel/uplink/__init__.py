"""`flywheel uplink`: an arm's host ships its episodes to the trainer and takes its weights from it
(docs/protocol.md "Fleet")."""
