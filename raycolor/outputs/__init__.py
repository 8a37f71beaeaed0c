"""What a run writes: the ledger (every OUTPUT path, the manifest schema, stats, roots, the lock, the resume
decision) and one writer class per layout. Storage only; no Ray."""
