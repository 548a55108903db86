"""pyro-dvae: Dynamical Variational Autoencoders in Pyro."""
