"""`synth review`: human review of curated rows in Argilla (push rows out, pull verdicts back)."""
