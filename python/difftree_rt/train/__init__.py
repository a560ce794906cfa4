"""Training: DFlash drafters for any HF target, and the reference pair."""
