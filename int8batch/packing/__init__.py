"""The packer: sources -> decode -> preprocess kernel -> atomic batch files + manifest."""
