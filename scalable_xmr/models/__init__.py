"""Models: the SDML supervised autoencoder and the image-text branch models."""
