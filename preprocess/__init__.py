"""preprocess: raw minute bars -> leak-free windowed sequences in HDF5 (see README, "Data")."""
