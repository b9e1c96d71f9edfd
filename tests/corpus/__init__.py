"""A corpus of real faulty servers and the ground truth of how each behaves under a matrix row's
fault, measured without omnitrace (docs/corpus.md)."""
