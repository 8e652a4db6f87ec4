"""Models: the nnx transformer LM (``transformer``) and small DG featurisers."""
