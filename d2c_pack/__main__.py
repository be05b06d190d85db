"""``python -m d2c_pack`` (and ``torchrun -m d2c_pack``) runs the command line."""

from d2c_pack.cli import main

main()
