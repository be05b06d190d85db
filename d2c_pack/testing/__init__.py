"""Tools for trying d2c-pack without the network: :mod:`d2c_pack.testing.hub_server`, a local Hub."""
