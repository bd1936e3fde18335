"""Models: observation encoders (V), sequence models (M) and controllers (C), chosen by name."""
