"""`synth publish` / `sft publish`: datasets and models to the Hugging Face Hub, with provenance cards."""
