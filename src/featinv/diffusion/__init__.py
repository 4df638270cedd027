"""FeatInv: a frozen base diffusion model, a ControlNet conditioned on feature maps, training and
batched sampling."""
