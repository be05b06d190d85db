"""Sources: opening a labelled image dataset (Hub, ImageFolder, parquet, ``save_to_disk``), the ImageNet label
space, the ADM centre crop, and the source flags (:mod:`~d2c_pack.sources.settings`, no torch).
"""
