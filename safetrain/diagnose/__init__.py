"""Floor 4, exception -> diagnosis: the facts read off a TensorFlow/Keras error, the rules that
classify them, and the replay that finds the first non-finite op. Stands on core only."""
