"""Reference trainer: SiT transport, data, training loop and sampling."""
