"""Model code: the DFlash drafter and the Hugging Face target adapter."""
