"""Pre-training and fine-tuning of the EgoVLPv2 teacher (torch; installed with the ``train`` extra)."""
