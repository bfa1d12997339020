"""Ready-to-run example studies: a CNN and a GRU on scikit-learn's bundled 8x8 digits (no
download), and the BLN paper's own CIFAR-10 CNN and IMDB LSTM (`cifar10_cnn`, `imdb_lstm`, on
`paper`'s splits; their datasets are downloaded once into Keras's cache)."""
