"""Ready-to-run example studies on scikit-learn's bundled 8x8 digits (no download)."""
