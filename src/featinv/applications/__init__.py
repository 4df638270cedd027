"""What FeatInv is used for: concept steering (FeatInv-Viz), feature interpolation and spatial composition."""
