"""The offline demo: a data pack built from assets that ship in wheels, and a small no-defense/SFT/T-Vaccine run."""
