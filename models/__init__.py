"""HAN, the MTSC loss and the official LLP metrics."""
