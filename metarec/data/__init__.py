"""The data layer: raw files → validated interactions → `Dataset` → protocol splits."""
